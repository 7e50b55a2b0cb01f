//! WADO-RS rendered and thumbnail resources (PS3.18 §10.4.1.1.3 and
//! §10.4.1.1.4, §8.3.5.1): stored frames as consumer images, for lists and
//! previews. Decoding and windowing are [`crate::dicom::render`]'s.
//!
//! - `…/instances/{i}/rendered`: the instance's first frame;
//!   `…/frames/{list}/rendered`: one frame as an image, several as
//!   `multipart/related`, one part each; `…/series/{se}/rendered` and
//!   `/studies/{s}/rendered`: every instance's first frame, one part each,
//!   rendered one at a time as the answer streams (instances without an
//!   image are left out).
//! - `…/thumbnail` at each level: one image fitted into the viewport asked
//!   or else 128 pixels, never enlarged; for a
//!   series its middle instance's first frame, for a study that of its
//!   first series that has an image.
//! - `Accept`: `image/jpeg` (the default), `image/png`, wildcards;
//!   anything else is 406. Query parameters: `quality` (1–100, JPEG),
//!   `viewport=width,height` (fitted, aspect ratio kept; a source region
//!   after the size is ignored), `window=center,width[,function]` (linear
//!   whatever the function). A malformed one is 400.
//! - A stored file is read into memory to decode it, so files above
//!   [`MAX_RENDERED_FILE`] are refused (501), as are frames beyond
//!   [`render::MAX_FRAME_SAMPLES`] samples and encodings we cannot decode
//!   (JPEG 2000, JPEG-LS); an instance without Pixel Data or the frame
//!   asked is 404.

use std::io::Read;

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::multipart;
use super::wado::Target;
use super::{blocking, streamed_body, Failure, Shared};
use crate::dicom::render::{self, ImageFormat, RenderError, RenderOptions};
use crate::services::retrieve::{Retrieve, RetrieveItem};

/// Largest stored file rendered (it is read whole to be decoded).
pub const MAX_RENDERED_FILE: u64 = 512 << 20;
/// Most series of a study tried for its thumbnail.
const MAX_THUMBNAIL_TRIES: usize = 8;

/// What one request asks for besides its target.
#[derive(Debug, Clone)]
struct Asked {
    options: RenderOptions,
}

impl Asked {
    fn parse(headers: &HeaderMap, raw_query: Option<&str>) -> Result<Asked, Failure> {
        let mut options = RenderOptions {
            format: accepted_format(headers)?,
            ..RenderOptions::default()
        };
        for (name, value) in form_urlencoded::parse(raw_query.unwrap_or("").as_bytes()) {
            let numbers = || -> Result<Vec<f64>, Failure> {
                value
                    .split(',')
                    .map(|v| v.trim().parse::<f64>().ok().filter(|n| n.is_finite()))
                    .collect::<Option<Vec<f64>>>()
                    .ok_or_else(|| Failure::bad_request(format!("{name}={value:?} is malformed")))
            };
            match name.as_ref() {
                "quality" => {
                    let quality = value
                        .trim()
                        .parse::<u8>()
                        .ok()
                        .filter(|q| (1..=100).contains(q))
                        .ok_or_else(|| {
                            Failure::bad_request(format!("quality={value:?}: 1 to 100"))
                        })?;
                    options.quality = quality;
                }
                "viewport" => {
                    let n = numbers()?;
                    let side = |v: f64| {
                        (v >= 1.0 && v <= f64::from(render::MAX_VIEWPORT)).then_some(v as u32)
                    };
                    match (
                        n.first().copied().and_then(side),
                        n.get(1).copied().and_then(side),
                    ) {
                        (Some(w), Some(h)) => options.viewport = Some((w, h)),
                        _ => {
                            return Err(Failure::bad_request(format!(
                                "viewport={value:?}: width,height of 1 to {}",
                                render::MAX_VIEWPORT
                            )))
                        }
                    }
                }
                "window" => {
                    let parts: Vec<&str> = value.split(',').collect();
                    let center = parts.first().and_then(|v| v.trim().parse::<f64>().ok());
                    let width = parts.get(1).and_then(|v| v.trim().parse::<f64>().ok());
                    match (center, width) {
                        (Some(c), Some(w)) if c.is_finite() && w.is_finite() && w >= 1.0 => {
                            options.window = Some((c, w));
                        }
                        _ => {
                            return Err(Failure::bad_request(format!(
                                "window={value:?}: center,width[,function] with width at least 1"
                            )))
                        }
                    }
                }
                // annotation, charset, iccprofile: not applied.
                _ => {}
            }
        }
        Ok(Asked { options })
    }
}

/// The image format an `Accept` header asks for (JPEG when it names none
/// we make, or for a wildcard); 406 when it accepts neither.
fn accepted_format(headers: &HeaderMap) -> Result<ImageFormat, Failure> {
    let Some(accept) = headers.get(header::ACCEPT).and_then(|a| a.to_str().ok()) else {
        return Ok(ImageFormat::Jpeg);
    };
    for range in accept.split(',') {
        let mut params = range.split(';');
        let mut media = params.next().unwrap_or("").trim().to_ascii_lowercase();
        if media == "multipart/related" {
            // The parts' type names the image format.
            media = params
                .filter_map(|p| p.split_once('='))
                .find(|(n, _)| n.trim().eq_ignore_ascii_case("type"))
                .map(|(_, v)| v.trim().trim_matches('"').to_ascii_lowercase())
                .unwrap_or_else(|| "*/*".into());
        }
        match media.as_str() {
            "image/jpeg" | "image/*" | "*/*" | "" => return Ok(ImageFormat::Jpeg),
            "image/png" => return Ok(ImageFormat::Png),
            _ => {}
        }
    }
    Err(Failure::new(
        StatusCode::NOT_ACCEPTABLE,
        "rendered resources are image/jpeg or image/png",
    ))
}

/// The answer's status for a frame that cannot be rendered.
fn failure(error: RenderError) -> Failure {
    let status = match error {
        RenderError::NoImage(_) => StatusCode::NOT_FOUND,
        RenderError::TooLarge(_) | RenderError::Unsupported(_) => StatusCode::NOT_IMPLEMENTED,
        RenderError::Unreadable(_) | RenderError::Encode(_) => StatusCode::INTERNAL_SERVER_ERROR,
    };
    if status.is_server_error() {
        tracing::warn!(%error, "a frame could not be rendered");
    }
    Failure::new(status, error.to_string())
}

/// The stored file of `item`, read whole (bounded).
fn read_file(retrieve: &Retrieve, item: &RetrieveItem) -> Result<Vec<u8>, Failure> {
    if item.file_size > MAX_RENDERED_FILE {
        return Err(Failure::new(
            StatusCode::NOT_IMPLEMENTED,
            format!(
                "{} is a file of {} bytes, beyond the {MAX_RENDERED_FILE} rendered",
                item.sop_instance_uid, item.file_size
            ),
        ));
    }
    let reader = retrieve
        .open(item)
        .map_err(|e| Failure::internal("cannot open a stored instance", &e))?;
    let mut bytes = Vec::with_capacity(item.file_size as usize);
    reader
        .take(MAX_RENDERED_FILE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| Failure::internal("cannot read a stored instance", &e))?;
    Ok(bytes)
}

/// Renders `frame` of `item` (or its thumbnail).
fn render_item(
    retrieve: &Retrieve,
    item: &RetrieveItem,
    frame: u32,
    options: &RenderOptions,
    thumbnail: bool,
) -> Result<Vec<u8>, Failure> {
    let file = read_file(retrieve, item)?;
    let rendered = if thumbnail {
        render::thumbnail(&file, frame, options)
    } else {
        render::render(&file, frame, options)
    };
    rendered.map_err(failure)
}

fn image_response(format: ImageFormat, image: Vec<u8>) -> Response {
    (
        [(header::CONTENT_TYPE, format.media_type().to_string())],
        image,
    )
        .into_response()
}

/// Every `(item, frame)` rendered, one part each, as the answer streams;
/// with `skip_missing`, items without an image are left out.
fn multipart_response(
    services: &Shared,
    parts: Vec<(RetrieveItem, u32)>,
    options: RenderOptions,
    skip_missing: bool,
) -> Response {
    let boundary = multipart::new_boundary();
    let media_type = options.format.media_type();
    let content_type = multipart::content_type(&boundary, media_type);
    let retrieve = services.retrieve.clone();
    let body = streamed_body(move |send| {
        for (item, frame) in &parts {
            let image = match render_item(&retrieve, item, *frame, &options, false) {
                Ok(image) => image,
                Err(f) if skip_missing && f.status == StatusCode::NOT_FOUND => continue,
                Err(f) => return Err(std::io::Error::other(f.reason)),
            };
            if !send(multipart::part_header(
                &boundary,
                media_type,
                Some(image.len() as u64),
            )) {
                return Ok(());
            }
            if !send(Bytes::from(image)) || !send(Bytes::from_static(multipart::PART_END)) {
                return Ok(());
            }
        }
        send(multipart::close(&boundary));
        Ok(())
    });
    ([(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// The stored instances a path names.
async fn instances(
    services: &Shared,
    study: String,
    series: Option<String>,
    instance: Option<String>,
) -> Result<Vec<RetrieveItem>, Failure> {
    let target = Target::parse(&study, series.as_deref(), instance.as_deref())?;
    let worker = services.clone();
    blocking(move || target.instances(&worker)).await
}

/// A single image of one instance's frame.
async fn one_image(
    services: Shared,
    item: RetrieveItem,
    frame: u32,
    asked: Asked,
    thumbnail: bool,
) -> Result<Response, Failure> {
    let format = asked.options.format;
    let image =
        blocking(move || render_item(&services.retrieve, &item, frame, &asked.options, thumbnail))
            .await?;
    Ok(image_response(format, image))
}

/// `GET /studies/{study}/rendered`.
pub(super) async fn study(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(study): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let items = instances(&s, study, None, None).await?;
    let parts = items.into_iter().map(|i| (i, 1)).collect();
    Ok(multipart_response(&s, parts, asked.options, true))
}

/// `GET /studies/{study}/series/{series}/rendered`.
pub(super) async fn series(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let items = instances(&s, study, Some(series), None).await?;
    let parts = items.into_iter().map(|i| (i, 1)).collect();
    Ok(multipart_response(&s, parts, asked.options, true))
}

/// `GET …/instances/{instance}/rendered`: the first frame.
pub(super) async fn instance(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series, instance)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let mut items = instances(&s, study, Some(series), Some(instance)).await?;
    one_image(s, items.swap_remove(0), 1, asked, false).await
}

/// `GET …/frames/{list}/rendered`.
pub(super) async fn frames(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series, instance, list)): Path<(String, String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let numbers = frame_numbers(&list)?;
    let item = instances(&s, study, Some(series), Some(instance))
        .await?
        .swap_remove(0);
    if let [frame] = numbers[..] {
        return one_image(s, item, frame, asked, false).await;
    }
    let parts = numbers.into_iter().map(|n| (item.clone(), n)).collect();
    Ok(multipart_response(&s, parts, asked.options, false))
}

/// Frame numbers (from 1, comma separated, at most 64 at once: each part
/// decodes the file again).
fn frame_numbers(list: &str) -> Result<Vec<u32>, Failure> {
    let numbers: Vec<u32> = list
        .split(',')
        .map(|n| n.trim().parse::<u32>().ok().filter(|n| *n > 0))
        .collect::<Option<Vec<u32>>>()
        .ok_or_else(|| Failure::bad_request(format!("{list:?} is not a list of frame numbers")))?;
    if numbers.len() > 64 {
        return Err(Failure::bad_request(
            "more than 64 rendered frames asked at once",
        ));
    }
    Ok(numbers)
}

/// The thumbnail of the first of `candidates` that has an image.
async fn first_thumbnail(
    services: Shared,
    candidates: Vec<RetrieveItem>,
    asked: Asked,
) -> Result<Response, Failure> {
    let format = asked.options.format;
    let image = blocking(move || {
        let mut last = Failure::not_found("no instance with an image");
        for item in candidates.iter().take(MAX_THUMBNAIL_TRIES) {
            match render_item(&services.retrieve, item, 1, &asked.options, true) {
                Ok(image) => return Ok(image),
                Err(f) if f.status == StatusCode::NOT_FOUND => last = f,
                Err(f) => return Err(f),
            }
        }
        Err(last)
    })
    .await?;
    Ok(image_response(format, image))
}

/// The middle instance of each series, in series order.
fn middles(items: &[RetrieveItem]) -> Vec<RetrieveItem> {
    let mut out = Vec::new();
    let mut start = 0;
    while start < items.len() {
        let series = &items[start].series_uid;
        let end = items[start..]
            .iter()
            .position(|i| &i.series_uid != series)
            .map_or(items.len(), |n| start + n);
        out.push(items[start + (end - start) / 2].clone());
        start = end;
    }
    out
}

/// `GET /studies/{study}/thumbnail`.
pub(super) async fn study_thumbnail(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path(study): Path<String>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let items = instances(&s, study, None, None).await?;
    first_thumbnail(s, middles(&items), asked).await
}

/// `GET /studies/{study}/series/{series}/thumbnail`.
pub(super) async fn series_thumbnail(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series)): Path<(String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let items = instances(&s, study, Some(series), None).await?;
    first_thumbnail(s, middles(&items), asked).await
}

/// `GET …/instances/{instance}/thumbnail`.
pub(super) async fn instance_thumbnail(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series, instance)): Path<(String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let mut items = instances(&s, study, Some(series), Some(instance)).await?;
    one_image(s, items.swap_remove(0), 1, asked, true).await
}

/// `GET …/frames/{frame}/thumbnail` (the first frame of a list).
pub(super) async fn frame_thumbnail(
    State(s): State<Shared>,
    headers: HeaderMap,
    Path((study, series, instance, list)): Path<(String, String, String, String)>,
    RawQuery(q): RawQuery,
) -> Result<Response, Failure> {
    let asked = Asked::parse(&headers, q.as_deref())?;
    let frame = frame_numbers(&list)?[0];
    let mut items = instances(&s, study, Some(series), Some(instance)).await?;
    one_image(s, items.swap_remove(0), frame, asked, true).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn accept(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(header::ACCEPT, HeaderValue::from_str(value).unwrap());
        headers
    }

    #[test]
    fn accept_chooses_the_format() {
        assert_eq!(
            accepted_format(&HeaderMap::new()).unwrap(),
            ImageFormat::Jpeg
        );
        assert_eq!(
            accepted_format(&accept("image/png")).unwrap(),
            ImageFormat::Png
        );
        assert_eq!(
            accepted_format(&accept("image/gif, image/png;q=0.5")).unwrap(),
            ImageFormat::Png
        );
        assert_eq!(accepted_format(&accept("*/*")).unwrap(), ImageFormat::Jpeg);
        assert_eq!(
            accepted_format(&accept("multipart/related; type=\"image/png\"")).unwrap(),
            ImageFormat::Png
        );
        let refused = accepted_format(&accept("application/dicom")).unwrap_err();
        assert_eq!(refused.status, StatusCode::NOT_ACCEPTABLE);
    }

    #[test]
    fn parameters_are_checked() {
        let asked = Asked::parse(
            &HeaderMap::new(),
            Some("quality=50&viewport=64,32&window=40,400,LINEAR"),
        )
        .unwrap();
        assert_eq!(asked.options.quality, 50);
        assert_eq!(asked.options.viewport, Some((64, 32)));
        assert_eq!(asked.options.window, Some((40.0, 400.0)));
        for bad in [
            "quality=0",
            "viewport=0,10",
            "viewport=100000,10",
            "window=40",
            "window=1,0",
        ] {
            let failure = Asked::parse(&HeaderMap::new(), Some(bad)).unwrap_err();
            assert_eq!(failure.status, StatusCode::BAD_REQUEST, "{bad}");
        }
        assert!(frame_numbers("1,2,x").is_err());
        assert_eq!(frame_numbers("3, 1").unwrap(), vec![3, 1]);
    }
}
