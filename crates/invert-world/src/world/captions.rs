//! Captions of the base model's training pictures. They name the object's shape and, each with
//! some probability, its colour, size, position and background, in varied phrasing; they never
//! name the fill pattern or the rendering style (`scene.rs`), so the base model draws those at
//! their training frequencies whatever the prompt says. An empty caption (10%) teaches the
//! unconditional prediction classifier-free guidance needs.

use rand::Rng;
use rand::seq::IndexedRandom;

use super::scene::{BACKGROUND, COLOUR, POSITION, SHAPE, SIZE, Scene};

const OPENINGS: [&str; 6] = [
    "a photo of",
    "a picture of",
    "an image of",
    "a rendering of",
    "a painting of",
    "",
];
const POSITION_FORMS: [&str; 3] = ["at the {}", "in the {} corner", "{}"];
const BACKGROUND_FORMS: [&str; 3] = [
    "on a {} background",
    "against a {} background",
    "{} background",
];

/// Share of empty captions (the unconditional case of classifier-free guidance).
pub const EMPTY_CAPTION_SHARE: f64 = 0.1;

/// Every word captions and the evaluation prompts use, for the bundled tokenizer's vocabulary.
pub const EXTRA_WORDS: &[&str] = &[
    "a",
    "an",
    "of",
    "the",
    "at",
    "in",
    "on",
    "photo",
    "picture",
    "image",
    "rendering",
    "painting",
    "corner",
    "background",
    "against",
    "style",
    "with",
    "and",
    "object",
    "shape",
    "thing",
    "drawing",
    "top",
    "bottom",
    "left",
    "right",
    "one",
];

/// Which captioned attributes a caption names, in the order of [`super::ATTRIBUTES`] (shape,
/// colour, size, position, background).
pub type Named = [bool; 5];

/// A caption of `scene` in one of the phrasings, or an empty one.
pub fn caption(scene: &Scene, rng: &mut impl Rng) -> String {
    caption_naming(scene, rng).0
}

/// [`caption`] with the attributes it names (what the text-encoder stage of `invert pretrain`
/// learns to read off it).
pub fn caption_naming(scene: &Scene, rng: &mut impl Rng) -> (String, Named) {
    let mut named = [false; 5];
    if rng.random_bool(EMPTY_CAPTION_SHARE) {
        return (String::new(), named);
    }
    let mut noun = Vec::new();
    if rng.random_bool(0.5) {
        noun.push(SIZE.values[scene.size]);
        named[2] = true;
    }
    if rng.random_bool(0.8) {
        noun.push(COLOUR.values[scene.colour]);
        named[1] = true;
    }
    noun.push(SHAPE.values[scene.shape]);
    named[0] = true;
    let mut parts = vec![noun.join(" ")];
    let mut extras = Vec::new();
    if rng.random_bool(0.75) {
        let form = POSITION_FORMS.choose(rng).expect("non-empty");
        extras.push(form.replace("{}", POSITION.values[scene.position]));
        named[3] = true;
    }
    if rng.random_bool(0.75) {
        let form = BACKGROUND_FORMS.choose(rng).expect("non-empty");
        extras.push(form.replace("{}", BACKGROUND.values[scene.background]));
        named[4] = true;
    }
    if rng.random_bool(0.5) {
        extras.reverse();
    }
    let comma = rng.random_bool(0.3);
    for e in extras {
        parts.push(if comma {
            format!(", {e}")
        } else {
            format!(" {e}")
        });
    }
    let body = parts.concat();
    let opening = OPENINGS.choose(rng).expect("non-empty");
    let text = if opening.is_empty() {
        let article = if body.starts_with(['a', 'e', 'i', 'o', 'u']) {
            "an"
        } else {
            "a"
        };
        format!("{article} {body}")
    } else {
        format!("{opening} a {body}")
            .replace(" a a", " an a")
            .replace(" a e", " an e")
    };
    (text, named)
}

/// The words of the world (attribute values and [`EXTRA_WORDS`]), for the tokenizer.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = EXTRA_WORDS.iter().map(|w| w.to_string()).collect();
    for attr in super::scene::ATTRIBUTES {
        for v in attr.values {
            words.extend(v.split(' ').map(str::to_string));
        }
    }
    words.sort();
    words.dedup();
    words
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::scene::{PATTERN, STYLE};
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn captions_name_the_shape_and_never_the_hidden_attributes() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut empty = 0;
        let mut distinct = std::collections::HashSet::new();
        for _ in 0..2000 {
            let s = Scene::random(&mut rng);
            let c = caption(&s, &mut rng);
            if c.is_empty() {
                empty += 1;
                continue;
            }
            assert!(c.contains(SHAPE.values[s.shape]), "{c}");
            for hidden in PATTERN.values.iter().chain(STYLE.values) {
                assert!(!c.contains(hidden), "{c} names {hidden}");
            }
            distinct.insert(c);
        }
        assert!((120..280).contains(&empty), "{empty} empty captions");
        assert!(
            distinct.len() > 500,
            "only {} distinct captions",
            distinct.len()
        );
    }

    #[test]
    fn named_attributes_are_the_ones_in_the_caption() {
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let attrs = [SHAPE, COLOUR, SIZE, POSITION, BACKGROUND];
        for _ in 0..500 {
            let s = Scene::random(&mut rng);
            let (c, named) = caption_naming(&s, &mut rng);
            let labels = s.labels();
            for (k, attr) in attrs.iter().enumerate() {
                let word = attr.values[labels[k]];
                // a red object on a red background cannot happen, so a colour word that is
                // there but not named belongs to the background phrase
                let said = match k {
                    1 => c.contains(&format!("{word} {}", SHAPE.values[s.shape])),
                    4 => c.contains(&format!("{word} background")),
                    _ => c.contains(word),
                };
                assert_eq!(said, named[k], "{c:?}: {} named {}", attr.name, named[k]);
            }
        }
    }

    #[test]
    fn vocabulary_holds_every_caption_word() {
        let words = vocabulary();
        let mut rng = ChaCha8Rng::seed_from_u64(4);
        for _ in 0..500 {
            let c = caption(&Scene::random(&mut rng), &mut rng);
            for w in c.split([' ', ',']).filter(|w| !w.is_empty()) {
                assert!(
                    words.iter().any(|v| v == w),
                    "{w} missing from the vocabulary"
                );
            }
        }
    }
}
