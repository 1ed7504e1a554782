//! Prompt syntax beyond plain text, as users of Stable Diffusion UIs write it: A1111's emphasis
//! (`(word:1.3)`, `[word]`, escapes, `BREAK`) and prompts longer than 75 tokens.

pub mod chunks;
pub mod emphasis;

pub use chunks::{PromptChunk, chunk_prompt};
pub use emphasis::{Weighted, parse};
