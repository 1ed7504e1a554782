//! Prompt templates: the paper's object and style lists (identical in rinongal's first release,
//! diffusers' `textual_inversion.py` and kohya; shared/reference/textual-inversion-anchors.md
//! section 5), or a user file with `{}` for the word and `{caption}` for a sidecar caption.

use std::path::Path;

/// `imagenet_templates_small` (27 entries).
pub const OBJECT_TEMPLATES: [&str; 27] = [
    "a photo of a {}",
    "a rendering of a {}",
    "a cropped photo of the {}",
    "the photo of a {}",
    "a photo of a clean {}",
    "a photo of a dirty {}",
    "a dark photo of the {}",
    "a photo of my {}",
    "a photo of the cool {}",
    "a close-up photo of a {}",
    "a bright photo of the {}",
    "a cropped photo of a {}",
    "a photo of the {}",
    "a good photo of the {}",
    "a photo of one {}",
    "a close-up photo of the {}",
    "a rendition of the {}",
    "a photo of the clean {}",
    "a rendition of a {}",
    "a photo of a nice {}",
    "a good photo of a {}",
    "a photo of the nice {}",
    "a photo of the small {}",
    "a photo of the weird {}",
    "a photo of the large {}",
    "a photo of a cool {}",
    "a photo of a small {}",
];

/// `imagenet_style_templates_small` (19 entries, two of them repeated as in the original).
pub const STYLE_TEMPLATES: [&str; 19] = [
    "a painting in the style of {}",
    "a rendering in the style of {}",
    "a cropped painting in the style of {}",
    "the painting in the style of {}",
    "a clean painting in the style of {}",
    "a dirty painting in the style of {}",
    "a dark painting in the style of {}",
    "a picture in the style of {}",
    "a cool painting in the style of {}",
    "a close-up painting in the style of {}",
    "a bright painting in the style of {}",
    "a cropped painting in the style of {}",
    "a good painting in the style of {}",
    "a close-up painting in the style of {}",
    "a rendition in the style of {}",
    "a nice painting in the style of {}",
    "a small painting in the style of {}",
    "a weird painting in the style of {}",
    "a large painting in the style of {}",
];

/// What the word stands for, which picks the built-in templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Property {
    Object,
    Style,
}

#[derive(Debug, thiserror::Error)]
pub enum TemplateError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: line {line} has no `{{}}` where the learned word goes: `{text}`")]
    NoPlaceholder {
        path: String,
        line: usize,
        text: String,
    },
    #[error("{path}: no templates (one per line, `{{}}` marks the learned word)")]
    Empty { path: String },
}

/// A list of prompt templates.
#[derive(Debug, Clone, PartialEq)]
pub struct Templates {
    pub lines: Vec<String>,
}

impl Templates {
    pub fn builtin(property: Property) -> Self {
        let lines: &[&str] = match property {
            Property::Object => &OBJECT_TEMPLATES,
            Property::Style => &STYLE_TEMPLATES,
        };
        Self {
            lines: lines.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Reads a template file: one template per line, `#` comments and blank lines skipped.
    pub fn from_file(path: &Path) -> Result<Self, TemplateError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TemplateError::Io {
            path: shown.clone(),
            source,
        })?;
        let mut lines = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            if !line.replace("{caption}", "").contains("{}") {
                return Err(TemplateError::NoPlaceholder {
                    path: shown,
                    line: i + 1,
                    text: line.to_string(),
                });
            }
            lines.push(line.to_string());
        }
        if lines.is_empty() {
            return Err(TemplateError::Empty { path: shown });
        }
        Ok(Self { lines })
    }

    /// Template `index` with the word and the image's caption filled in. A template that asks
    /// for a caption on an image without one drops the placeholder and the comma/space before it.
    pub fn render(&self, index: usize, word: &str, caption: Option<&str>) -> String {
        let t = &self.lines[index % self.lines.len()];
        let filled = match caption {
            Some(c) => t.replace("{caption}", c),
            None => t
                .replace(", {caption}", "")
                .replace(" {caption}", "")
                .replace("{caption}", ""),
        };
        filled.replace("{}", word).trim().to_string()
    }

    pub fn len(&self) -> usize {
        self.lines.len()
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_lists_have_the_papers_sizes() {
        assert_eq!(Templates::builtin(Property::Object).len(), 27);
        assert_eq!(Templates::builtin(Property::Style).len(), 19);
        assert_eq!(
            Templates::builtin(Property::Object).render(0, "<cat-toy>", None),
            "a photo of a <cat-toy>"
        );
        assert_eq!(
            Templates::builtin(Property::Style).render(19, "S*", None),
            "a painting in the style of S*"
        );
    }

    #[test]
    fn custom_file_with_captions() {
        let dir = std::env::temp_dir().join(format!("invert-templates-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.txt");
        std::fs::write(
            &path,
            "# my templates\n\na photo of {}, {caption}\n{} on a table\n",
        )
        .unwrap();
        let t = Templates::from_file(&path).unwrap();
        assert_eq!(t.len(), 2);
        assert_eq!(
            t.render(0, "S*", Some("red background")),
            "a photo of S*, red background"
        );
        assert_eq!(t.render(0, "S*", None), "a photo of S*");
        std::fs::write(&path, "a photo of a dog\n").unwrap();
        let err = Templates::from_file(&path).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("no `{}`"), "{err}");
        std::fs::write(&path, "# nothing\n").unwrap();
        assert!(
            Templates::from_file(&path)
                .unwrap_err()
                .to_string()
                .contains("no templates")
        );
    }
}
