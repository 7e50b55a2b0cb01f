//! One frame of a stored instance as a consumer image (JPEG or PNG), for
//! DICOMweb's rendered resources (PS3.18 §8.3.5.1, §10.4.1.1.3). Pure: a
//! Part 10 file's bytes in, an encoded image out.
//!
//! - The frame is decoded by dicom-pixeldata: native pixel data, JPEG
//!   (baseline, extended, lossless) and RLE; other encodings (JPEG 2000,
//!   JPEG-LS) are [`RenderError::Unsupported`].
//! - Monochrome: the Modality LUT (Rescale Slope and Intercept) is applied,
//!   then a linear window (PS3.3 C.11.2.1.2): the request's, else the data
//!   set's first Window Center and Width, else the frame's minimum and
//!   maximum; MONOCHROME1 is inverted so that it displays as intended.
//! - Colour: RGB as stored (8 or 16 bits, either planar configuration);
//!   native YBR_FULL is converted to RGB. Palette colour is unsupported.
//! - The image is scaled, keeping its aspect ratio, to fit the viewport
//!   asked (`viewport=w,h`); a thumbnail fits into the viewport or else
//!   into 128 × 128 pixels, and is never enlarged.
//!
//! Bounds: frames of more than [`MAX_FRAME_SAMPLES`] samples, or a
//! viewport beyond [`MAX_VIEWPORT`] pixels a side, are refused before any
//! allocation of their size ([`RenderError::TooLarge`]).

use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, OpenFileOptions};
use dicom_pixeldata::{PhotometricInterpretation, PixelDecoder, PlanarConfiguration};
use image::{DynamicImage, GrayImage, ImageEncoder, RgbImage};

/// Most samples (rows × columns × samples per pixel) of a frame rendered.
pub const MAX_FRAME_SAMPLES: u64 = 1 << 26;
/// Largest viewport side, in pixels.
pub const MAX_VIEWPORT: u32 = 4096;
/// Largest side of a thumbnail (PS3.18 leaves it to the server).
pub const THUMBNAIL_SIZE: u32 = 128;

/// The encoding of the rendered image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// `image/jpeg` (the default).
    Jpeg,
    /// `image/png`.
    Png,
}

impl ImageFormat {
    /// The media type.
    pub fn media_type(self) -> &'static str {
        match self {
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Png => "image/png",
        }
    }
}

/// How to render.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderOptions {
    /// The encoding.
    pub format: ImageFormat,
    /// JPEG quality, 1 to 100.
    pub quality: u8,
    /// Fit into this many pixels (width, height); `None`: the frame's size.
    pub viewport: Option<(u32, u32)>,
    /// Window (center, width) replacing the data set's.
    pub window: Option<(f64, f64)>,
}

impl Default for RenderOptions {
    fn default() -> Self {
        RenderOptions {
            format: ImageFormat::Jpeg,
            quality: 90,
            viewport: None,
            window: None,
        }
    }
}

/// Why a frame cannot be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The file is no readable DICOM data set.
    #[error("cannot read the stored instance: {0}")]
    Unreadable(String),
    /// The instance holds no image (no Pixel Data, or no such frame).
    #[error("{0}")]
    NoImage(String),
    /// The frame is larger than what we render.
    #[error("{0}")]
    TooLarge(String),
    /// The pixel data's encoding or photometric interpretation is one we
    /// cannot decode.
    #[error("cannot render: {0}")]
    Unsupported(String),
    /// The image could not be encoded.
    #[error("cannot encode the image: {0}")]
    Encode(String),
}

/// Renders frame `frame` (from 1) of the Part 10 file `file` (preamble
/// included, as stored).
pub fn render(file: &[u8], frame: u32, options: &RenderOptions) -> Result<Vec<u8>, RenderError> {
    if let Some((w, h)) = options.viewport {
        if w == 0 || h == 0 || w > MAX_VIEWPORT || h > MAX_VIEWPORT {
            return Err(RenderError::TooLarge(format!(
                "a viewport of {w}×{h}: each side must be 1 to {MAX_VIEWPORT}"
            )));
        }
    }
    let object = read(file)?;
    let decoded = decode_frame(&object, frame, options.window)?;
    let image = scale(decoded, options.viewport, true);
    encode(&image, options)
}

/// A thumbnail: frame `frame` fitted into the viewport asked, else into
/// [`THUMBNAIL_SIZE`] pixels, never enlarged.
pub fn thumbnail(file: &[u8], frame: u32, options: &RenderOptions) -> Result<Vec<u8>, RenderError> {
    let object = read(file)?;
    let decoded = decode_frame(&object, frame, options.window)?;
    let fit = options.viewport.unwrap_or((THUMBNAIL_SIZE, THUMBNAIL_SIZE));
    let image = scale(decoded, Some(fit), false);
    encode(&image, options)
}

fn read(file: &[u8]) -> Result<DefaultDicomObject, RenderError> {
    let body = match file.get(128..132) {
        Some(b"DICM") => &file[128..],
        _ => file,
    };
    OpenFileOptions::new()
        .from_reader(body)
        .map_err(|e| RenderError::Unreadable(e.to_string()))
}

fn u32_of(object: &DefaultDicomObject, tag: dicom_core::Tag) -> Option<u32> {
    object
        .element_opt(tag)
        .ok()
        .flatten()
        .and_then(|e| e.to_int::<u32>().ok())
}

/// The frame (from 1) as an 8-bit image, windowed (with `window` when
/// given).
fn decode_frame(
    object: &DefaultDicomObject,
    frame: u32,
    window: Option<(f64, f64)>,
) -> Result<DynamicImage, RenderError> {
    if object
        .element_opt(tags::PIXEL_DATA)
        .ok()
        .flatten()
        .is_none()
    {
        return Err(RenderError::NoImage(
            "the instance holds no Pixel Data".into(),
        ));
    }
    let rows = u32_of(object, tags::ROWS).unwrap_or(0);
    let columns = u32_of(object, tags::COLUMNS).unwrap_or(0);
    let samples = u32_of(object, tags::SAMPLES_PER_PIXEL).unwrap_or(1);
    let frames = u32_of(object, tags::NUMBER_OF_FRAMES).unwrap_or(1).max(1);
    let size = u64::from(rows) * u64::from(columns) * u64::from(samples);
    if rows == 0 || columns == 0 {
        return Err(RenderError::NoImage("Rows or Columns missing".into()));
    }
    if size > MAX_FRAME_SAMPLES {
        return Err(RenderError::TooLarge(format!(
            "a frame of {columns}×{rows}×{samples} samples is beyond the {MAX_FRAME_SAMPLES} rendered"
        )));
    }
    if frame == 0 || frame > frames {
        return Err(RenderError::NoImage(format!(
            "no frame {frame}: the instance has {frames}"
        )));
    }
    let pixels = object
        .decode_pixel_data_frame(frame - 1)
        .map_err(|e| RenderError::Unsupported(e.to_string()))?;
    let (width, height) = (pixels.columns(), pixels.rows());
    let photometric = pixels.photometric_interpretation().clone();
    match photometric {
        PhotometricInterpretation::Monochrome1 | PhotometricInterpretation::Monochrome2 => {
            let values: Vec<f64> = pixels
                .to_vec_frame(0)
                .map_err(|e| RenderError::Unsupported(e.to_string()))?;
            let stored = match pixels.window().ok().flatten().and_then(|w| w.first()) {
                Some(w) if w.width > 0.0 => Some((w.center, w.width)),
                _ => None,
            };
            let (center, width_of_window) = RenderWindow::choose(window, stored, &values);
            let invert = photometric == PhotometricInterpretation::Monochrome1;
            let gray: Vec<u8> = values
                .iter()
                .map(|v| {
                    let g = linear_window(*v, center, width_of_window);
                    if invert {
                        255 - g
                    } else {
                        g
                    }
                })
                .collect();
            GrayImage::from_raw(width, height, gray)
                .map(DynamicImage::ImageLuma8)
                .ok_or_else(|| RenderError::Unsupported("a frame shorter than its size".into()))
        }
        PhotometricInterpretation::Rgb | PhotometricInterpretation::YbrFull
            if pixels.samples_per_pixel() == 3 =>
        {
            let data = pixels
                .frame_data(0)
                .map_err(|e| RenderError::Unsupported(e.to_string()))?;
            let bytes_per_sample = usize::from(pixels.bits_allocated().div_ceil(8));
            let count = width as usize * height as usize;
            if data.len() < count * 3 * bytes_per_sample {
                return Err(RenderError::Unsupported(
                    "a frame shorter than its size".into(),
                ));
            }
            let shift = pixels.bits_stored().saturating_sub(8);
            let sample = |index: usize| -> u8 {
                if bytes_per_sample == 2 {
                    let v = u16::from_le_bytes([data[2 * index], data[2 * index + 1]]);
                    (v >> shift).min(255) as u8
                } else {
                    data[index]
                }
            };
            let planar = pixels.planar_configuration() == PlanarConfiguration::PixelFirst;
            let mut rgb = Vec::with_capacity(count * 3);
            for i in 0..count {
                let at = |c: usize| if planar { c * count + i } else { i * 3 + c };
                let (a, b, c) = (sample(at(0)), sample(at(1)), sample(at(2)));
                if photometric == PhotometricInterpretation::YbrFull {
                    rgb.extend(ybr_to_rgb(a, b, c));
                } else {
                    rgb.extend([a, b, c]);
                }
            }
            RgbImage::from_raw(width, height, rgb)
                .map(DynamicImage::ImageRgb8)
                .ok_or_else(|| RenderError::Unsupported("a frame shorter than its size".into()))
        }
        other => Err(RenderError::Unsupported(format!(
            "photometric interpretation {other} with {} samples per pixel",
            pixels.samples_per_pixel()
        ))),
    }
}

/// The window a monochrome frame is rendered with.
struct RenderWindow;

impl RenderWindow {
    /// The request's window, else the data set's, else the values' range.
    fn choose(asked: Option<(f64, f64)>, stored: Option<(f64, f64)>, values: &[f64]) -> (f64, f64) {
        if let Some(window) = asked.or(stored) {
            return window;
        }
        let (min, max) = values
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(*v), hi.max(*v))
            });
        if !min.is_finite() || !max.is_finite() {
            return (0.0, 1.0);
        }
        // Center and width so that min maps to 0 and max to 255.
        let width = (max - min + 1.0).max(1.0);
        (min + (max - min) / 2.0 + 0.5, width)
    }
}

/// PS3.3 C.11.2.1.2.1: the linear VOI LUT function onto 0..=255.
fn linear_window(x: f64, center: f64, width: f64) -> u8 {
    let width = width.max(1.0);
    let low = center - 0.5 - (width - 1.0) / 2.0;
    let high = center - 0.5 + (width - 1.0) / 2.0;
    if x <= low {
        0
    } else if x > high || width <= 1.0 {
        255
    } else {
        (((x - (center - 0.5)) / (width - 1.0) + 0.5) * 255.0)
            .round()
            .clamp(0.0, 255.0) as u8
    }
}

/// YBR_FULL (PS3.3 C.7.6.3.1.2) to RGB.
fn ybr_to_rgb(y: u8, cb: u8, cr: u8) -> [u8; 3] {
    let (y, cb, cr) = (f64::from(y), f64::from(cb) - 128.0, f64::from(cr) - 128.0);
    let clamp = |v: f64| v.round().clamp(0.0, 255.0) as u8;
    [
        clamp(y + 1.402 * cr),
        clamp(y - 0.344136 * cb - 0.714136 * cr),
        clamp(y + 1.772 * cb),
    ]
}

/// The image fitted into `viewport`, aspect ratio kept; enlarged only when
/// `enlarge`.
fn scale(image: DynamicImage, viewport: Option<(u32, u32)>, enlarge: bool) -> DynamicImage {
    let Some((w, h)) = viewport else {
        return image;
    };
    let fits = image.width() <= w && image.height() <= h;
    let touches = image.width() == w || image.height() == h;
    if fits && (touches || !enlarge) {
        return image;
    }
    image.resize(w, h, image::imageops::FilterType::Triangle)
}

fn encode(image: &DynamicImage, options: &RenderOptions) -> Result<Vec<u8>, RenderError> {
    let mut out = Vec::new();
    let (width, height) = (image.width(), image.height());
    let (bytes, color) = match image {
        DynamicImage::ImageLuma8(gray) => (gray.as_raw().as_slice(), image::ExtendedColorType::L8),
        DynamicImage::ImageRgb8(rgb) => (rgb.as_raw().as_slice(), image::ExtendedColorType::Rgb8),
        _ => return Err(RenderError::Encode("an unexpected pixel layout".into())),
    };
    let result = match options.format {
        ImageFormat::Jpeg => image::codecs::jpeg::JpegEncoder::new_with_quality(
            &mut out,
            options.quality.clamp(1, 100),
        )
        .write_image(bytes, width, height, color),
        ImageFormat::Png => {
            image::codecs::png::PngEncoder::new(&mut out).write_image(bytes, width, height, color)
        }
    };
    result.map_err(|e| RenderError::Encode(e.to_string()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use dicom_core::value::PrimitiveValue;
    use dicom_core::{DataElement, VR};
    use dicom_object::{FileMetaTableBuilder, InMemDicomObject};

    /// A Part 10 file: `columns` × `rows`, 16-bit unsigned monochrome (or
    /// 8-bit RGB when `photometric` is RGB), with these extra elements.
    fn file(
        photometric: &str,
        (columns, rows): (u16, u16),
        pixels: PrimitiveValue,
        extra: &[(dicom_core::Tag, VR, &str)],
    ) -> Vec<u8> {
        let rgb = photometric == "RGB";
        let mut object = InMemDicomObject::from_element_iter([
            DataElement::new(tags::SOP_CLASS_UID, VR::UI, "1.2.840.10008.5.1.4.1.1.7"),
            DataElement::new(tags::SOP_INSTANCE_UID, VR::UI, "1.2.3.4"),
            DataElement::new(
                tags::SAMPLES_PER_PIXEL,
                VR::US,
                PrimitiveValue::from(if rgb { 3u16 } else { 1 }),
            ),
            DataElement::new(tags::PHOTOMETRIC_INTERPRETATION, VR::CS, photometric),
            DataElement::new(tags::ROWS, VR::US, PrimitiveValue::from(rows)),
            DataElement::new(tags::COLUMNS, VR::US, PrimitiveValue::from(columns)),
            DataElement::new(
                tags::BITS_ALLOCATED,
                VR::US,
                PrimitiveValue::from(if rgb { 8u16 } else { 16 }),
            ),
            DataElement::new(
                tags::BITS_STORED,
                VR::US,
                PrimitiveValue::from(if rgb { 8u16 } else { 16 }),
            ),
            DataElement::new(
                tags::HIGH_BIT,
                VR::US,
                PrimitiveValue::from(if rgb { 7u16 } else { 15 }),
            ),
            DataElement::new(
                tags::PIXEL_REPRESENTATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ),
            DataElement::new(tags::PIXEL_DATA, if rgb { VR::OB } else { VR::OW }, pixels),
        ]);
        if rgb {
            object.put(DataElement::new(
                tags::PLANAR_CONFIGURATION,
                VR::US,
                PrimitiveValue::from(0u16),
            ));
        }
        for (tag, vr, value) in extra {
            object.put(DataElement::new(*tag, *vr, PrimitiveValue::from(*value)));
        }
        let file = object
            .with_meta(FileMetaTableBuilder::new().transfer_syntax("1.2.840.10008.1.2.1"))
            .unwrap();
        let mut bytes = Vec::new();
        file.write_all(&mut bytes).unwrap();
        assert_eq!(&bytes[128..132], b"DICM", "written with its preamble");
        bytes
    }

    fn png_pixels(encoded: &[u8]) -> DynamicImage {
        assert_eq!(&encoded[1..4], b"PNG");
        image::load_from_memory_with_format(encoded, image::ImageFormat::Png).unwrap()
    }

    fn png() -> RenderOptions {
        RenderOptions {
            format: ImageFormat::Png,
            ..RenderOptions::default()
        }
    }

    #[test]
    fn monochrome_is_rescaled_windowed_and_inverted() {
        // Stored 0, 1000, 1040, 2000 with intercept -1000: -1000, 0, 40,
        // 1000 HU; window 40/400 (PS3.3 C.11.2.1.2.1): black, 102, 128, white.
        let pixels = PrimitiveValue::U16(vec![0, 1000, 1040, 2000].into());
        let extra = [
            (tags::RESCALE_INTERCEPT, VR::DS, "-1000"),
            (tags::RESCALE_SLOPE, VR::DS, "1"),
            (tags::WINDOW_CENTER, VR::DS, "40\\300"),
            (tags::WINDOW_WIDTH, VR::DS, "400\\1500"),
        ];
        let two = file("MONOCHROME2", (4, 1), pixels.clone(), &extra);
        let image = png_pixels(&render(&two, 1, &png()).unwrap()).to_luma8();
        assert_eq!(image.as_raw(), &vec![0, 102, 128, 255]);
        let one = file("MONOCHROME1", (4, 1), pixels.clone(), &extra);
        let image = png_pixels(&render(&one, 1, &png()).unwrap()).to_luma8();
        assert_eq!(image.as_raw(), &vec![255, 153, 127, 0]);
        // No window: the values' range.
        let plain = file("MONOCHROME2", (4, 1), pixels.clone(), &[]);
        let image = png_pixels(&render(&plain, 1, &png()).unwrap()).to_luma8();
        assert_eq!((image.as_raw()[0], image.as_raw()[3]), (0, 255));
        // The request's window wins.
        let asked = RenderOptions {
            window: Some((1000.0, 1.0)),
            ..png()
        };
        let image = png_pixels(&render(&plain, 1, &asked).unwrap()).to_luma8();
        assert_eq!(image.as_raw(), &vec![0, 255, 255, 255]);
    }

    #[test]
    fn rgb_jpeg_and_scaling() {
        let pixels: Vec<u8> = (0..16 * 8).flat_map(|_| [200u8, 10, 10]).collect();
        let bytes = file("RGB", (16, 8), PrimitiveValue::U8(pixels.into()), &[]);
        let image = png_pixels(&render(&bytes, 1, &png()).unwrap()).to_rgb8();
        assert_eq!(image.get_pixel(3, 3).0, [200, 10, 10]);
        let jpeg = render(&bytes, 1, &RenderOptions::default()).unwrap();
        assert_eq!(&jpeg[..3], &[0xFF, 0xD8, 0xFF]);
        // A viewport keeps the aspect ratio; a thumbnail never enlarges.
        let fitted = RenderOptions {
            viewport: Some((64, 64)),
            ..png()
        };
        let image = png_pixels(&render(&bytes, 1, &fitted).unwrap());
        assert_eq!((image.width(), image.height()), (64, 32));
        let thumb = png_pixels(&thumbnail(&bytes, 1, &png()).unwrap());
        assert_eq!((thumb.width(), thumb.height()), (16, 8));
        let wide: Vec<u8> = (0..512 * 2).flat_map(|_| [1u8, 2, 3]).collect();
        let wide = file("RGB", (512, 2), PrimitiveValue::U8(wide.into()), &[]);
        let thumb = png_pixels(&thumbnail(&wide, 1, &png()).unwrap());
        assert_eq!(thumb.width(), THUMBNAIL_SIZE);
    }

    #[test]
    fn bounds_and_missing_images_are_refused() {
        let pixels = PrimitiveValue::U16(vec![0; 4].into());
        let small = file("MONOCHROME2", (2, 2), pixels, &[]);
        assert!(matches!(
            render(&small, 2, &png()),
            Err(RenderError::NoImage(_))
        ));
        assert!(matches!(
            render(&small, 0, &png()),
            Err(RenderError::NoImage(_))
        ));
        let huge_viewport = RenderOptions {
            viewport: Some((MAX_VIEWPORT + 1, 10)),
            ..png()
        };
        assert!(matches!(
            render(&small, 1, &huge_viewport),
            Err(RenderError::TooLarge(_))
        ));
        // A header claiming 65535 × 65535 × 3 samples, with two bytes of
        // pixel data: refused before decoding.
        let absurd = file(
            "RGB",
            (65535, 65535),
            PrimitiveValue::U8(vec![0, 0].into()),
            &[],
        );
        assert!(matches!(
            render(&absurd, 1, &png()),
            Err(RenderError::TooLarge(_))
        ));
        assert!(matches!(
            render(b"not dicom at all", 1, &png()),
            Err(RenderError::Unreadable(_))
        ));
    }

    #[test]
    fn the_linear_window_follows_ps3_3() {
        // Center 40, width 400 (soft tissue): -160 and below black, 240
        // and above white, the center mid-grey.
        assert_eq!(linear_window(-1000.0, 40.0, 400.0), 0);
        assert_eq!(linear_window(-160.0, 40.0, 400.0), 0);
        assert_eq!(linear_window(40.0, 40.0, 400.0), 128);
        assert_eq!(linear_window(240.0, 40.0, 400.0), 255);
        assert_eq!(linear_window(3000.0, 40.0, 400.0), 255);
        // A window of one is a threshold.
        assert_eq!(linear_window(9.0, 10.0, 1.0), 0);
        assert_eq!(linear_window(10.0, 10.0, 1.0), 255);
    }

    #[test]
    fn without_a_window_the_range_spans_black_to_white() {
        let values = [-1024.0, 0.0, 3071.0];
        let (c, w) = RenderWindow::choose(None, None, &values);
        assert_eq!(linear_window(-1024.0, c, w), 0);
        assert_eq!(linear_window(3071.0, c, w), 255);
        assert_eq!(
            RenderWindow::choose(Some((1.0, 2.0)), Some((3.0, 4.0)), &values),
            (1.0, 2.0)
        );
        assert_eq!(
            RenderWindow::choose(None, Some((3.0, 4.0)), &values),
            (3.0, 4.0)
        );
    }

    #[test]
    fn ybr_grey_stays_grey() {
        assert_eq!(ybr_to_rgb(100, 128, 128), [100, 100, 100]);
    }
}
