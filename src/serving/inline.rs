//! Images written straight into request bytes. A body built for sending holds, where each image's
//! data URL goes, a marker (a per-process random tag and the image's content hash); `encode_body`
//! serializes the JSON and writes each image's `data:<mime>;base64,...` URL at its marker. The image
//! is base64-encoded once, into the final buffer, instead of into a JSON string that the
//! serializer copies again and scans for characters to escape (base64 has none).

use serde_json::Value;

use crate::images::EncodedImage;

/// A per-process random tag: markers carrying it cannot come from prompt text or model output.
fn inline_nonce() -> &'static str {
    static NONCE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NONCE.get_or_init(|| format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)))
}

/// Where an image's data URL goes in a body built for sending.
pub(super) fn inline_marker(img: &EncodedImage) -> String {
    format!("imagescope-inline-{}-{}", inline_nonce(), img.hash())
}

/// The bytes of a request body built with `ImageRendering::Send`: its JSON, with each inline image
/// marker replaced by the image's data URL. `images` are the request's images (any order).
pub fn encode_body<'a>(
    body: &Value,
    images: impl IntoIterator<Item = &'a EncodedImage>,
) -> Vec<u8> {
    encode_body_referring(body, images, |_| false).0
}

/// `encode_body`, except that an image for which `held(hash)` is true (the server holds it under
/// its `uuid`) is sent without its bytes: its `"image_url": {"url": ...}` becomes
/// `"image_url": null`, as vLLM takes it. Returns the bytes and how many images went so.
pub fn encode_body_referring<'a>(
    body: &Value,
    images: impl IntoIterator<Item = &'a EncodedImage>,
    held: impl Fn(&str) -> bool,
) -> (Vec<u8>, usize) {
    const OPEN: &[u8] = b"{\"url\":\"";
    const CLOSE: &[u8] = b"\"}";
    let json = serde_json::to_vec(body).unwrap_or_default();
    let images: Vec<&EncodedImage> = images.into_iter().collect();
    if images.is_empty() {
        return (json, 0);
    }
    let mut referred = 0;
    let prefix = format!("imagescope-inline-{}-", inline_nonce());
    let finder = memchr::memmem::Finder::new(prefix.as_bytes());
    let extra: usize = images.iter().map(|i| i.len().div_ceil(3) * 4 + 32).sum();
    let mut out = Vec::with_capacity(json.len() + extra);
    let mut rest = json.as_slice();
    while let Some(at) = finder.find(rest) {
        out.extend_from_slice(&rest[..at]);
        let after = &rest[at + prefix.len()..];
        let hash_len = after.iter().take_while(|b| b.is_ascii_hexdigit()).count();
        let hash = &after[..hash_len];
        let tail = &after[hash_len..];
        match images.iter().find(|i| i.hash().as_bytes() == hash) {
            // Held by the server, and the marker is a whole `{"url": ...}` object: null it.
            Some(img) if out.ends_with(OPEN) && tail.starts_with(CLOSE) && held(img.hash()) => {
                out.truncate(out.len() - OPEN.len());
                out.extend_from_slice(b"null");
                referred += 1;
                rest = &tail[CLOSE.len()..];
                continue;
            }
            Some(img) => img.write_data_url(&mut out),
            // Not one of this request's images: leave the text as it was.
            None => out.extend_from_slice(&rest[at..at + prefix.len() + hash_len]),
        }
        rest = tail;
    }
    out.extend_from_slice(rest);
    (out, referred)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn png(shade: u8) -> EncodedImage {
        let img = image::RgbImage::from_pixel(3, 2, image::Rgb([shade, 0, 0]));
        let mut out = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut out, image::ImageFormat::Png)
            .unwrap();
        EncodedImage::from_bytes(out.into_inner(), "test").unwrap()
    }

    #[test]
    fn an_image_the_server_holds_goes_as_null_and_the_others_as_bytes() {
        let (a, b) = (png(1), png(2));
        let body = json!({"messages": [{"content": [
            {"type": "image_url", "image_url": {"url": inline_marker(&a)}, "uuid": a.hash()},
            {"type": "text", "text": "compare"},
            {"type": "image_url", "image_url": {"url": inline_marker(&b)}, "uuid": b.hash()},
        ]}]});
        let (bytes, referred) = encode_body_referring(&body, [&a, &b], |h| h == a.hash());
        assert_eq!(referred, 1);
        let sent: Value = serde_json::from_slice(&bytes).unwrap();
        let parts = &sent["messages"][0]["content"];
        assert_eq!(parts[0]["image_url"], Value::Null);
        assert_eq!(parts[0]["uuid"], a.hash());
        assert_eq!(parts[2]["image_url"]["url"], b.data_url());
        assert_eq!(parts[2]["uuid"], b.hash());
        // Held by none: the same bytes as `encode_body`.
        let (all, none) = encode_body_referring(&body, [&a, &b], |_| false);
        assert_eq!((all, none), (encode_body(&body, [&a, &b]), 0));
    }

    #[test]
    fn every_marker_becomes_its_images_data_url() {
        let (a, b) = (png(1), png(2));
        let body = json!({"messages": [{"content": [
            {"type": "image_url", "image_url": {"url": inline_marker(&b)}},
            {"type": "text", "text": "compare"},
            {"type": "image_url", "image_url": {"url": inline_marker(&a)}},
        ]}]});
        let sent: Value = serde_json::from_slice(&encode_body(&body, [&a, &b])).unwrap();
        let parts = &sent["messages"][0]["content"];
        assert_eq!(parts[0]["image_url"]["url"], b.data_url());
        assert_eq!(parts[1]["text"], "compare");
        assert_eq!(parts[2]["image_url"]["url"], a.data_url());
    }

    #[test]
    fn text_that_imitates_a_marker_is_sent_as_written() {
        let a = png(1);
        // Another process's tag, or this one's with the hash of an image not in the request.
        let forged = format!("imagescope-inline-{}-{}", "0".repeat(32), a.hash());
        let unknown = format!("imagescope-inline-{}-{}", inline_nonce(), "ab".repeat(32));
        let body = json!({"text": [forged, unknown], "plain": "no images"});
        let sent: Value = serde_json::from_slice(&encode_body(&body, [&a])).unwrap();
        assert_eq!(sent, body);
        assert_eq!(encode_body(&body, []), serde_json::to_vec(&body).unwrap());
    }
}
