//! `--device` and `--precision` as every command resolves them, and the line that says what
//! was chosen (on stderr, so stdout stays the command's own output).

use anyhow::{Context, Result};
use burn::tensor::DType;
use invert_model::device::{Choice, choose, dtype_name, precision};

/// The `--device` help shared by the commands that take it.
pub const DEVICE_HELP: &str = "Backend: auto (a GPU through wgpu when one is present, else the \
     CPU; never a software adapter; $INVERT_DEVICE, when set, stands in for auto), cpu, or wgpu \
     (the best adapter wgpu finds, software ones too)";

/// Resolve `--device` and print the choice.
pub fn open(device: &str) -> Result<Choice> {
    let choice = choose(device).with_context(|| format!("--device {device}"))?;
    eprintln!("device: {choice}");
    Ok(choice)
}

/// Resolve `--device` and `--precision` together and print both.
pub fn open_with_precision(device: &str, precision_name: &str) -> Result<(Choice, DType)> {
    let choice = choose(device).with_context(|| format!("--device {device}"))?;
    let dtype = precision(precision_name, &choice)
        .with_context(|| format!("--precision {precision_name}"))?;
    let auto = if precision_name == "auto" {
        " (auto)"
    } else {
        ""
    };
    eprintln!("device: {choice}, precision {}{auto}", dtype_name(dtype));
    Ok((choice, dtype))
}
