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
    let json = serde_json::to_vec(body).unwrap_or_default();
    let images: Vec<&EncodedImage> = images.into_iter().collect();
    if images.is_empty() {
        return json;
    }
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
        match images.iter().find(|i| i.hash().as_bytes() == hash) {
            Some(img) => img.write_data_url(&mut out),
            // Not one of this request's images: leave the text as it was.
            None => out.extend_from_slice(&rest[at..at + prefix.len() + hash_len]),
        }
        rest = &after[hash_len..];
    }
    out.extend_from_slice(rest);
    out
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
