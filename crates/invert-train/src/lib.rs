//! Textual-inversion training: data, prompt templates, schedules, the optimiser and the loop.

pub mod checkpoint;
pub mod config;
pub mod data;
pub mod lr_schedule;
pub mod norm_guard;
pub mod optimizer;
pub mod templates;
pub mod trainer;
