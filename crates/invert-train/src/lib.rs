//! Textual-inversion training: data, prompt templates, schedules, the optimiser and the loop.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod eval;
pub mod lr_schedule;
pub mod optimizer;
pub mod oracle;
pub mod pretrain;
pub mod templates;
pub mod trainer;
pub mod world;
