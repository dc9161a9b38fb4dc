#!/usr/bin/env python3
"""Builds the test suites of the packaged crates, as a user who downloads them
from crates.io would: after `cargo package --workspace`, every published
crate's package (target/package/<name>-<version>/, its normalized manifest and
the files it ships) is copied into a scratch workspace whose perfkit
dependencies are patched to those copies, and `cargo test --no-run` builds
every test, example and doctest-free target there. A test that needs a file
the package does not ship, or a dev-dependency that packaging drops, fails here.
"""
import json
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    metadata = json.loads(
        subprocess.run(
            ["cargo", "metadata", "--format-version", "1", "--no-deps", "--locked"],
            cwd=ROOT, capture_output=True, text=True, check=True,
        ).stdout
    )
    published = [
        p for p in metadata["packages"]
        if p.get("publish") is None or p.get("publish")  # None: publishable anywhere
    ]
    scratch = os.path.join(ROOT, "target", "package-tests")
    shutil.rmtree(scratch, ignore_errors=True)
    os.makedirs(scratch)
    members, patches = [], []
    for package in published:
        name, version = package["name"], package["version"]
        unpacked = os.path.join(ROOT, "target", "package", f"{name}-{version}")
        if not os.path.isdir(unpacked):
            print(f"{unpacked} is missing: run `cargo package --workspace` first", file=sys.stderr)
            return 1
        shutil.copytree(unpacked, os.path.join(scratch, name), symlinks=False)
        # The package's own target dir (from verification) is not part of it.
        shutil.rmtree(os.path.join(scratch, name, "target"), ignore_errors=True)
        members.append(name)
        patches.append(f'{name} = {{ path = "{name}" }}')
    with open(os.path.join(scratch, "Cargo.toml"), "w") as manifest:
        manifest.write("[workspace]\nresolver = \"3\"\nmembers = [%s]\n\n[patch.crates-io]\n%s\n" % (
            ", ".join(f'"{m}"' for m in members), "\n".join(patches)))
    # The versions the workspace tested with.
    shutil.copy(os.path.join(ROOT, "Cargo.lock"), os.path.join(scratch, "Cargo.lock"))
    env = dict(os.environ, CARGO_TARGET_DIR=os.path.join(ROOT, "target"))
    build = subprocess.run(
        ["cargo", "test", "--workspace", "--all-features", "--no-run"],
        cwd=scratch, env=env,
    )
    if build.returncode != 0:
        print("the packaged crates' test suites do not build from their packages", file=sys.stderr)
        return 1
    print(f"test suites of {len(members)} packaged crates build: {', '.join(members)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
