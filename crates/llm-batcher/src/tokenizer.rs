//! Exact token counts for `OpenAI`'s vocabularies (feature `tokenizer`).

/// An `OpenAI` vocabulary, counted exactly with the bpe-openai crate (its
/// vocabularies ship inside the crate: nothing is fetched at run time). The
/// first count of each loads it once per process.
///
/// ```
/// use perfkit_llm_batcher::Encoding;
///
/// assert_eq!(Encoding::Cl100k.count("tiktoken is great!"), 6);
/// assert_eq!(Encoding::for_model("text-embedding-3-small"), Some(Encoding::Cl100k));
/// assert_eq!(Encoding::for_model("gpt-4o-mini"), Some(Encoding::O200k));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Encoding {
    /// `cl100k_base`: the embeddings models (`text-embedding-3-*`,
    /// `text-embedding-ada-002`), `gpt-4`, `gpt-3.5-turbo`.
    Cl100k,
    /// `o200k_base`: `gpt-4o`, `gpt-4.1`, `o1`, `o3`, `o4` and later.
    O200k,
}

impl Encoding {
    /// The vocabulary of an `OpenAI` model, by its name; `None` for a model
    /// this crate does not know (count with the heuristic then).
    #[must_use]
    pub fn for_model(model: &str) -> Option<Self> {
        let model = model.rsplit('/').next().unwrap_or(model);
        const O200K: [&str; 6] = ["gpt-4o", "gpt-4.1", "gpt-5", "o1", "o3", "o4"];
        const CL100K: [&str; 4] = ["text-embedding-", "gpt-4", "gpt-3.5", "text-davinci"];
        if O200K.iter().any(|prefix| model.starts_with(prefix)) {
            Some(Self::O200k)
        } else if CL100K.iter().any(|prefix| model.starts_with(prefix)) {
            Some(Self::Cl100k)
        } else {
            None
        }
    }

    /// The tokens of `text` in this vocabulary.
    #[must_use]
    pub fn count(self, text: &str) -> u32 {
        let tokenizer = match self {
            Self::Cl100k => bpe_openai::cl100k_base(),
            Self::O200k => bpe_openai::o200k_base(),
        };
        u32::try_from(tokenizer.count(text)).unwrap_or(u32::MAX)
    }
}
