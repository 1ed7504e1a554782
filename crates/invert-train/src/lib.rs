//! Textual-inversion training: data, prompt templates, schedules and the training loop.

pub mod data;
pub mod lr_schedule;
pub mod templates;
