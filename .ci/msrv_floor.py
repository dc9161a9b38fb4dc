#!/usr/bin/env python3
"""The MSRV floor check: every published workspace crate declares a
`rust-version` at least as high as the highest `rust-version` among the
crates it depends on (normal and build dependencies, resolved, all features).

A dependency bump that raises the floor fails here until the manifest says so.
Reads `cargo metadata`; needs no extra toolchain.
"""
import json
import subprocess
import sys


def version(text):
    """'1.88' or '1.88.0' -> (1, 88, 0); None for None."""
    if not text:
        return None
    parts = [int(p) for p in text.split(".")]
    return tuple(parts + [0] * (3 - len(parts)))


def main():
    run = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--all-features", "--locked"],
        capture_output=True,
        text=True,
    )
    if run.returncode != 0:
        print(run.stderr, file=sys.stderr)
        print("cargo metadata --locked failed: with these manifests Cargo.lock would change "
              "(a rust-version below the locked dependencies' makes the resolver pick others)",
              file=sys.stderr)
        return 1
    metadata = json.loads(run.stdout)
    packages = {p["id"]: p for p in metadata["packages"]}
    nodes = {n["id"]: n for n in metadata["resolve"]["nodes"]}
    members = metadata["workspace_members"]

    def runtime_deps(node_id):
        """Ids reachable through normal and build dependency edges."""
        seen, stack = set(), [node_id]
        while stack:
            current = stack.pop()
            for dep in nodes[current]["deps"]:
                kinds = {k["kind"] for k in dep["dep_kinds"]}
                if kinds & {None, "build"} and dep["pkg"] not in seen:
                    seen.add(dep["pkg"])
                    stack.append(dep["pkg"])
        return seen

    failures = []
    for member in sorted(members, key=lambda m: packages[m]["name"]):
        package = packages[member]
        if package.get("publish") == []:
            continue  # publish = false: no user builds it with an older toolchain
        declared = version(package.get("rust_version"))
        needed, by = (0, 0, 0), None
        for dep in runtime_deps(member):
            floor = version(packages[dep].get("rust_version"))
            if floor and floor > needed:
                needed, by = floor, packages[dep]
        label = ".".join(map(str, needed[:2]))
        if declared is None or declared < needed:
            failures.append(
                f"{package['name']} declares rust-version {package.get('rust_version')} "
                f"but {by['name']} {by['version']} needs {by['rust_version']}"
            )
        else:
            print(f"ok  {package['name']}: rust-version {package['rust_version']} "
                  f">= {label}" + (f" ({by['name']} {by['version']})" if by else ""))
    if failures:
        print("\n".join(["MSRV floor below a dependency's:"] + failures), file=sys.stderr)
        print("Raise `rust-version` in the crate's manifest (or the workspace's) to at least that.",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
