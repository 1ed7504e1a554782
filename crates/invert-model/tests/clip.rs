//! CLIP parity (issue 21): a random-weight tiny `CLIPModel` and transformers' references, written by
//! `scripts/make_clip_fixtures.py` (see tests/fixtures/README.md). Flex backend, f32.
//! Features: 1e-4 (absolute, relative above 1). Preprocessing: transformers 5's
//! `CLIPImageProcessor` resizes with PyTorch's uint8 antialiased bicubic, which invert reproduces
//! bit for bit (`clip::resample`), so the uint8 crops must be equal and the normalised values agree
//! to f32 rounding (1e-6). The layouts of openai/clip-vit-base-patch32 and -large-patch14 are
//! checked at full size from their key and shape lists (`full-size-keys.txt`), with zeros for data.

mod common;

use std::path::PathBuf;
use std::sync::Arc;

use burn::prelude::*;
use burn::tensor::DType;
use common::{assert_close, assert_identical, fixture};
use invert_model::clip::model_keys::{Depths, LOGIT_SCALE, clip_model_keys, detect_layout};
use invert_model::clip::{
    CLIPConfig, CLIPImageProcessor, ClipLayout, ClipLoadError, ClipLoadOptions, LoadedClip,
    RgbImage, load_clip, load_clip_vision,
};
use invert_model::loading::apply::{Assignment, apply};
use invert_model::weights::safetensors_file::SafetensorsFile;
use invert_model::weights::{StoredDType, TensorMeta, TensorReader, WeightError};

const TOL: f32 = 1e-4;
/// f32 rounding of `(u8 - 255 mean) / (255 std)` (values up to about 2.2).
const PIXEL_TOL: f32 = 1e-6;
const IMAGES: [&str; 3] = ["odd-50x37", "photo-300x200", "large-263x241"];
/// The golden file keeps this row of each 224 crop's `pixel_values`.
const ROW: usize = 101;

fn golden() -> SafetensorsFile {
    SafetensorsFile::open(&fixture("clip/golden.safetensors")).expect("golden file")
}

fn f32s<const D: usize>(g: &SafetensorsFile, name: &str, device: &Device) -> Tensor<D> {
    let meta = g
        .meta(name)
        .unwrap_or_else(|| panic!("golden {name}"))
        .clone();
    Tensor::from_data(
        TensorData::new(g.read_f32(name).unwrap(), meta.shape),
        device,
    )
}

fn ids(g: &SafetensorsFile, device: &Device) -> Tensor<2, Int> {
    let name = "text.input_ids";
    let meta = g.meta(name).unwrap().clone();
    let v: Vec<i64> = g
        .read_bytes(name)
        .unwrap()
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    Tensor::from_data(TensorData::new(v, meta.shape), device)
}

/// `(rgb, width, height)` of a PNG.
fn png(path: PathBuf) -> (Vec<u8>, usize, usize) {
    let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut reader = png::Decoder::new(std::io::BufReader::new(file))
        .read_info()
        .unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    assert_eq!(info.color_type, png::ColorType::Rgb, "{}", path.display());
    buf.truncate(info.buffer_size());
    (buf, info.width as usize, info.height as usize)
}

fn load_folder(device: &Device) -> LoadedClip {
    load_clip(
        &fixture("clip/tiny-clip"),
        &ClipLoadOptions::default(),
        device,
    )
    .unwrap_or_else(|e| panic!("loading tiny-clip: {e}"))
}

#[test]
fn folder_features_match_transformers() {
    let device = Device::flex();
    let g = golden();
    let mut clip = load_folder(&device);
    assert_eq!(clip.layout, ClipLayout::Transformers);
    assert!(
        clip.report.unexpected.is_empty(),
        "{:?}",
        clip.report.unexpected
    );
    assert_eq!(
        clip.model.text_eos_token_id, 2,
        "the legacy config: argmax pooling"
    );

    let ids = ids(&g, &device);
    let text = clip.model.get_text_features(ids.clone());
    assert_close(
        "text_embeds",
        text.clone(),
        f32s(&g, "text.text_embeds", &device),
        TOL,
    );
    let pixels = f32s(&g, "image.pixel_values", &device);
    let image = clip.model.get_image_features(pixels);
    assert_close(
        "image_embeds",
        image.clone(),
        f32s(&g, "image.image_embeds", &device),
        TOL,
    );
    let two = text.slice([0..2, 0..16]);
    let logits = clip.model.logits_per_image(image, two);
    assert_close(
        "logits_per_image",
        logits,
        f32s(&g, "logits_per_image", &device),
        TOL,
    );

    // transformers' other pooling rule: the first end-of-text id, position 0 without one
    clip.model.text_eos_token_id = 999;
    let text = clip.model.get_text_features(ids);
    let want = f32s(&g, "text.text_embeds_eos999", &device);
    assert_close("text_embeds (eos_token_id 999)", text, want, TOL);
}

#[test]
fn folder_tokenizer_gives_transformers_ids() {
    let device = Device::flex();
    let g = golden();
    let clip = load_folder(&device);
    let tokenizer = clip
        .tokenizer
        .expect("the folder has vocab.json + merges.txt");
    let want = ids(&g, &device)
        .into_data()
        .convert::<i64>()
        .try_to_vec::<i64>()
        .unwrap();
    for (row, prompt) in ["a photo of a cat", "a drawing of a dog on the beach"]
        .iter()
        .enumerate()
    {
        let got: Vec<i64> = tokenizer
            .encode(prompt)
            .unwrap()
            .ids
            .iter()
            .map(|&i| i64::from(i))
            .collect();
        assert_eq!(got, want[row * 77..(row + 1) * 77], "{prompt}");
    }
}

#[test]
fn png_to_features_matches_transformers() {
    let device = Device::flex();
    let g = golden();
    let clip = load_folder(&device);
    assert_eq!(
        clip.processor.crop_size,
        (32, 32),
        "the folder's preprocessor_config.json"
    );
    let decoded: Vec<_> = IMAGES
        .iter()
        .map(|n| png(fixture(&format!("clip/images/{n}.png"))))
        .collect();
    let images: Vec<RgbImage> = decoded
        .iter()
        .map(|(rgb, width, height)| RgbImage {
            width: *width,
            height: *height,
            rgb,
        })
        .collect();
    let pixels = clip.processor.pixel_values(&images, &device).unwrap();
    let want = f32s(&g, "image.pixel_values", &device);
    assert_close(
        "pixel_values (tiny processor, 32)",
        pixels.clone(),
        want,
        PIXEL_TOL,
    );
    let image = clip.model.get_image_features(pixels);
    let want = f32s::<2>(&g, "image.image_embeds", &device);
    assert_close("image_embeds from PNG", image, want.clone(), TOL);
    // the same through the loaded model's helpers
    let image = clip.image_features(&images, &device).unwrap();
    assert_close("LoadedClip::image_features", image, want, TOL);
    let prompts = ["a photo of a cat", "a drawing of a dog on the beach"];
    let text = clip.text_features(&prompts, &device).unwrap();
    let want = f32s::<2>(&g, "text.text_embeds", &device).slice([0..2, 0..16]);
    assert_close("LoadedClip::text_features", text, want, TOL);
}

#[test]
fn preprocessing_at_224_matches_transformers() {
    let device = Device::flex();
    let g = golden();
    let processor = CLIPImageProcessor::default();
    for name in IMAGES {
        let (rgb, width, height) = png(fixture(&format!("clip/images/{name}.png")));
        let image = RgbImage {
            width,
            height,
            rgb: &rgb,
        };
        let (crop, w, h) = processor.resize_and_crop(image).unwrap();
        let (want, ww, wh) = png(fixture(&format!("clip/crop224/{name}.png")));
        assert_eq!((w, h), (ww, wh));
        let differ = crop.iter().zip(&want).filter(|(a, b)| a != b).count();
        let worst = crop
            .iter()
            .zip(&want)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        println!(
            "{name}: {differ} of {} uint8 values differ (max {worst} levels)",
            crop.len()
        );
        assert_eq!(
            differ, 0,
            "{name}: the resized, cropped image differs from transformers'"
        );

        let values = processor.preprocess(image).unwrap();
        let rows: Vec<f32> = (0..3)
            .flat_map(|c| {
                values[c * 224 * 224 + ROW * 224..c * 224 * 224 + (ROW + 1) * 224].to_vec()
            })
            .collect();
        let got = Tensor::<2>::from_data(TensorData::new(rows, [3, 224]), &device);
        let want = f32s(&g, &format!("pixels224.{name}.row{ROW}"), &device);
        assert_close(
            &format!("{name} pixel_values row {ROW} (224)"),
            got,
            want,
            PIXEL_TOL,
        );
    }
}

#[test]
fn open_clip_file_gives_identical_features() {
    let device = Device::flex();
    let g = golden();
    let folder = load_folder(&device);
    let options = ClipLoadOptions {
        config: Some(fixture("clip/tiny-clip/config.json")),
        ..Default::default()
    };
    let file = fixture("clip/tiny-clip-open_clip.safetensors");
    let oc = load_clip(&file, &options, &device).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(oc.layout, ClipLayout::OpenClip);
    assert!(
        oc.report.unexpected.is_empty(),
        "{:?}",
        oc.report.unexpected
    );
    assert_eq!(oc.model.logit_scale, folder.model.logit_scale);
    let ids = ids(&g, &device);
    let pixels = f32s::<4>(&g, "image.pixel_values", &device);
    assert_identical(
        "text features",
        oc.model.get_text_features(ids.clone()),
        folder.model.get_text_features(ids),
    );
    let image = folder.model.get_image_features(pixels.clone());
    assert_identical(
        "image features",
        oc.model.get_image_features(pixels.clone()),
        image,
    );

    // the vision tower alone, from either layout
    let pooled = folder
        .model
        .vision_model
        .forward(pixels.clone())
        .pooler_output;
    for (path, opts) in [
        (fixture("clip/tiny-clip"), ClipLoadOptions::default()),
        (file.clone(), options.clone()),
    ] {
        let vision = load_clip_vision(&path, &opts, &device).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(vision.config, folder.config.vision_config);
        let got = vision.model.forward(pixels.clone()).pooler_output;
        assert_identical("vision pooler_output", got, pooled.clone());
    }
}

#[test]
fn open_clip_architecture_is_read_from_shapes() {
    let folder = load_folder(&Device::flex()).config;
    let reader = SafetensorsFile::open(&fixture("clip/tiny-clip-open_clip.safetensors")).unwrap();
    // the tiny text tower has heads of width 8 (the vision tower's are 6; real models use 64)
    let inferred = CLIPConfig::from_open_clip(&reader, 8, "quick_gelu").unwrap();
    assert_eq!(inferred.text_config, folder.text_config);
    let mut vision = inferred.vision_config.clone();
    assert_eq!(vision.num_attention_heads, 3);
    vision.num_attention_heads = 4;
    assert_eq!(vision, folder.vision_config);
    assert_eq!(inferred.projection_dim, folder.projection_dim);
    assert_eq!(
        inferred.text_eos_token_id, 2,
        "OpenAI's encode_text pools at argmax"
    );
}

#[test]
fn bad_inputs_are_explained() {
    let device = Device::flex();
    // a text encoder alone has transformers names but no vision tower and no CLIP config
    let te = fixture("tiny-sd1/text_encoder/model.fp16.safetensors");
    let err = load_clip(&te, &ClipLoadOptions::default(), &device).unwrap_err();
    assert!(matches!(err, ClipLoadError::NeedsConfig { .. }), "{err}");
    assert!(err.to_string().contains("needs its config.json"), "{err}");
    let options = ClipLoadOptions {
        config: Some(fixture("clip/tiny-clip")),
        ..Default::default()
    };
    let err = load_clip(&te, &options, &device).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, ClipLoadError::ShapeMismatch { .. }) && msg.contains("token_embedding"),
        "{msg}"
    );
    assert!(
        msg.contains("model.fp16.safetensors") && msg.contains("pass the config.json"),
        "{msg}"
    );

    // a deeper vision tower than the file holds: the missing layer's tensors are named
    let dir = std::env::temp_dir().join(format!("invert-clip-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("clip/tiny-clip/config.json")).unwrap(),
    )
    .unwrap();
    json["vision_config"]["num_hidden_layers"] = 3.into();
    let config = dir.join("config.json");
    std::fs::write(&config, json.to_string()).unwrap();
    let options = ClipLoadOptions {
        config: Some(config),
        ..Default::default()
    };
    let file = fixture("clip/tiny-clip-open_clip.safetensors");
    let err = load_clip(&file, &options, &device).unwrap_err();
    let msg = err.to_string();
    std::fs::remove_dir_all(&dir).ok();
    assert!(matches!(err, ClipLoadError::MissingKeys { .. }), "{msg}");
    assert!(msg.contains("vision_model.encoder.layers.2."), "{msg}");
    assert!(msg.contains("tiny-clip-open_clip.safetensors"), "{msg}");

    // not CLIP at all
    let vae = fixture("tiny-sd2/vae/diffusion_pytorch_model.safetensors");
    let err = load_clip(&vae, &ClipLoadOptions::default(), &device).unwrap_err();
    assert!(matches!(err, ClipLoadError::NotClip { .. }), "{err}");
    let err = load_clip(
        &fixture("clip/nothing-here"),
        &ClipLoadOptions::default(),
        &device,
    )
    .unwrap_err();
    assert!(err.to_string().contains("no such file"), "{err}");
}

/// Tensor shapes without data (zeros when read): a full-size checkpoint's layout.
struct ShapesOnly {
    path: PathBuf,
    metas: std::collections::BTreeMap<String, TensorMeta>,
}

impl TensorReader for ShapesOnly {
    fn path(&self) -> &std::path::Path {
        &self.path
    }
    fn names(&self) -> Vec<String> {
        self.metas.keys().cloned().collect()
    }
    fn meta(&self, name: &str) -> Option<&TensorMeta> {
        self.metas.get(name)
    }
    fn read_f32(&self, name: &str) -> Result<Vec<f32>, WeightError> {
        Ok(vec![0.0; self.metas[name].numel()])
    }
}

/// One model of full-size-keys.txt: its config and the two layouts, every layer expanded from
/// the first (the file also lists the last one, whose shapes must be the first's).
struct FullSize {
    name: String,
    config: CLIPConfig,
    transformers: ShapesOnly,
    open_clip: ShapesOnly,
}

fn full_size_models() -> Vec<FullSize> {
    let path = fixture("clip/full-size-keys.txt");
    let text = std::fs::read_to_string(&path).unwrap();
    // (name, config JSON, (kind, key, shape) rows)
    type Row = (String, String, Vec<usize>);
    let mut models: Vec<(String, serde_json::Value, Vec<Row>)> = vec![];
    for line in text.lines() {
        if let Some(name) = line.strip_prefix("# ") {
            models.push((
                name.split(':').next().unwrap().into(),
                serde_json::Value::Null,
                vec![],
            ));
        } else if let Some(json) = line.strip_prefix("config ") {
            models.last_mut().unwrap().1 = serde_json::from_str(json).unwrap();
        } else {
            let mut f = line.split(' ');
            let (kind, key, shape) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""));
            let shape = shape
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| s.parse().unwrap());
            models
                .last_mut()
                .unwrap()
                .2
                .push((kind.into(), key.into(), shape.collect()));
        }
    }
    models
        .into_iter()
        .map(|(name, json, rows)| {
            let config = CLIPConfig::from_json(&json).unwrap();
            let (nt, nv) = (
                config.text_config.num_hidden_layers,
                config.vision_config.num_hidden_layers,
            );
            let towers = [
                ("text_model.encoder.layers.", nt),
                ("vision_model.encoder.layers.", nv),
                ("visual.transformer.resblocks.", nv),
                ("transformer.resblocks.", nt),
            ];
            let mut sets = [
                ShapesOnly::default_for(&name, "hf"),
                ShapesOnly::default_for(&name, "oc"),
            ];
            let mut first_layer = std::collections::BTreeMap::new();
            for (kind, key, shape) in &rows {
                let set = &mut sets[usize::from(kind == "oc")];
                let meta = TensorMeta {
                    dtype: StoredDType::F32,
                    shape: shape.clone(),
                };
                let tower = towers.iter().find(|(p, _)| key.starts_with(p));
                let Some((prefix, n)) = tower else {
                    set.metas.insert(key.clone(), meta);
                    continue;
                };
                let rest = &key[prefix.len()..];
                let (layer, tail) = rest.split_once('.').unwrap();
                if layer == "0" {
                    first_layer.insert((*prefix, tail.to_string()), shape.clone());
                    for i in 0..*n {
                        set.metas
                            .insert(format!("{prefix}{i}.{tail}"), meta.clone());
                    }
                } else {
                    assert_eq!(layer, (n - 1).to_string(), "{name}: {key}");
                    assert_eq!(
                        first_layer[&(*prefix, tail.to_string())],
                        *shape,
                        "{name}: {key}"
                    );
                }
            }
            let [transformers, open_clip] = sets;
            FullSize {
                name,
                config,
                transformers,
                open_clip,
            }
        })
        .collect()
}

impl ShapesOnly {
    fn default_for(name: &str, kind: &str) -> Self {
        Self {
            path: PathBuf::from(format!("{name} ({kind} names, shapes only)")),
            metas: Default::default(),
        }
    }
}

/// The key table and the module fit `name`'s real layout (built on torch's meta device by the
/// fixture script): every tensor of both namings fills a parameter of the right shape, none is
/// missing, and the OpenAI shapes give back its architecture.
fn full_size_layout_loads(name: &str, positions: usize) {
    let device = Device::flex();
    let m = full_size_models()
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} in full-size-keys.txt"));
    assert_eq!(m.config.vision_config.num_positions(), positions);
    let depths = Depths {
        text: m.config.text_config.num_hidden_layers,
        vision: m.config.vision_config.num_hidden_layers,
    };
    for (reader, layout) in [
        (&m.transformers, ClipLayout::Transformers),
        (&m.open_clip, ClipLayout::OpenClip),
    ] {
        let names = reader.names();
        assert_eq!(detect_layout(&names), Some(layout), "{name}");
        let mapping = clip_model_keys(&names, layout, depths).unwrap();
        assert!(
            mapping.unmapped.is_empty(),
            "{name}: {:?}",
            mapping.unmapped
        );
        let assignments: Vec<Assignment> = mapping
            .mapped
            .into_iter()
            .filter(|(t, _)| t != LOGIT_SCALE)
            .map(|(path, source)| Assignment { path, source })
            .collect();
        let n = assignments.len();
        let mut model = m.config.init(&device);
        let shapes = ShapesOnly {
            path: reader.path.clone(),
            metas: reader.metas.clone(),
        };
        // half precision: ViT-L/14 is 428 M parameters
        let report = apply(&mut model, Arc::new(shapes), assignments, DType::F16, name)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(report.applied, n, "{name} {layout:?}");
        assert!(report.unexpected.is_empty(), "{:?}", report.unexpected);
        println!("{name} {layout:?}: {n} parameters filled");
    }
    let inferred = CLIPConfig::from_open_clip(&m.open_clip, 64, "quick_gelu").unwrap();
    assert_eq!(
        inferred, m.config,
        "{name}: architecture from OpenAI shapes"
    );
}

#[test]
fn openai_vit_b32_layout_loads() {
    full_size_layout_loads("openai/clip-vit-base-patch32", 50);
}

#[test]
fn openai_vit_l14_layout_loads() {
    full_size_layout_loads("openai/clip-vit-large-patch14", 257);
}

/// A folder with `pytorch_model.bin` (the older transformers layout) instead of
/// `model.safetensors` loads the same model: the tiny folder's tensors re-written as a torch zip.
#[test]
fn pytorch_model_bin_folder_loads_the_same_model() {
    use invert_model::weights::torch_write::{
        PickleValue, TensorData as TorchTensor, write_torch_zip,
    };
    let device = Device::flex();
    let g = golden();
    let st = SafetensorsFile::open(&fixture("clip/tiny-clip/model.safetensors")).unwrap();
    let names = st.names();
    let bytes: Vec<Vec<u8>> = names.iter().map(|n| st.read_bytes(n).unwrap()).collect();
    let entries = names
        .iter()
        .zip(&bytes)
        .map(|(n, b)| {
            let meta = st.meta(n).unwrap();
            let tensor = TorchTensor {
                dtype: meta.dtype,
                shape: meta.shape.clone(),
                data: b,
            };
            (n.clone(), PickleValue::Tensor(tensor))
        })
        .collect();
    let dir = std::env::temp_dir().join(format!("invert-clip-bin-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::copy(
        fixture("clip/tiny-clip/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    write_torch_zip(
        &dir.join("pytorch_model.bin"),
        &PickleValue::Dict(entries),
        true,
    )
    .unwrap();
    let loaded = load_clip(&dir, &ClipLoadOptions::default(), &device);
    std::fs::remove_dir_all(&dir).ok();
    let bin = loaded.unwrap_or_else(|e| panic!("{e}"));
    assert!(bin.tokenizer.is_none(), "no tokenizer files in this folder");
    let err = bin.text_features(&["a cat"], &device).unwrap_err();
    assert!(matches!(err, ClipLoadError::NoTokenizer), "{err}");
    assert_eq!(
        bin.processor,
        CLIPImageProcessor::openai(32),
        "OpenAI's settings at 32"
    );
    let folder = load_folder(&device);
    let ids = ids(&g, &device);
    let pixels = f32s::<4>(&g, "image.pixel_values", &device);
    assert_identical(
        "text features (.bin)",
        bin.model.get_text_features(ids.clone()),
        folder.model.get_text_features(ids),
    );
    assert_identical(
        "image features (.bin)",
        bin.model.get_image_features(pixels.clone()),
        folder.model.get_image_features(pixels),
    );
}
