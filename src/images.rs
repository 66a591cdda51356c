//! Image bytes as they travel to model servers: read once, hashed, and rendered as a `data:` URL
//! (or a `file://` URL for servers allowed to read local media).
//!
//! Decoding, resizing and compositing live with the roles and the index; this module only owns the
//! encoded bytes and their identity (a content hash used in cache keys and snapshots).

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// An encoded image (PNG, JPEG, WebP...) ready to be sent.
#[derive(Clone, PartialEq, Eq)]
pub struct EncodedImage {
    /// Shared, not copied: `Bytes` takes the read buffer as it is and clones by reference count.
    bytes: bytes::Bytes,
    mime: &'static str,
    hash: String,
    path: Option<PathBuf>,
}

impl std::fmt::Debug for EncodedImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "EncodedImage({}, {} bytes, {})",
            self.mime,
            self.bytes.len(),
            self.short_hash()
        )
    }
}

/// Why an image could not be prepared for sending.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The file could not be read.
    #[error("cannot read image {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The bytes could not be decoded (truncated, corrupt, or over the size limits).
    #[error("cannot decode image {what}: {message}")]
    Decode {
        /// The file or a description of the bytes.
        what: String,
        /// The decoder's message.
        message: String,
    },
    /// The bytes are not an image format we know.
    #[error("{what} is not a PNG, JPEG, WebP, GIF, BMP or TIFF image ({len} bytes)")]
    UnknownFormat {
        /// The file or a description of the bytes.
        what: String,
        /// Byte count.
        len: usize,
    },
}

impl EncodedImage {
    /// Wraps already-encoded bytes, sniffing the format from the magic bytes.
    pub fn from_bytes(bytes: Vec<u8>, what: &str) -> Result<Self, ImageError> {
        let mime = sniff_mime(&bytes).ok_or_else(|| ImageError::UnknownFormat {
            what: what.to_string(),
            len: bytes.len(),
        })?;
        let hash = blake3::hash(&bytes).to_hex().to_string();
        Ok(EncodedImage {
            bytes: bytes::Bytes::from(bytes),
            mime,
            hash,
            path: None,
        })
    }

    /// Reads a file's bytes as they are (no re-encoding).
    pub fn from_file(path: &Path) -> Result<Self, ImageError> {
        let bytes = std::fs::read(path).map_err(|source| ImageError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut img = Self::from_bytes(bytes, &path.display().to_string())?;
        img.path = std::path::absolute(path).ok();
        Ok(img)
    }

    /// The raw encoded bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// MIME type, e.g. `image/png`.
    pub fn mime(&self) -> &'static str {
        self.mime
    }

    /// Full blake3 hex digest of the bytes.
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The first 16 hex digits of the hash, for logs and snapshots.
    pub fn short_hash(&self) -> &str {
        &self.hash[..16]
    }

    /// Absolute path of the source file, when it came from one.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// `data:<mime>;base64,<bytes>`.
    pub fn data_url(&self) -> String {
        let mut url = Vec::new();
        self.write_data_url(&mut url);
        // Only ASCII was written (the MIME type and base64).
        String::from_utf8(url).unwrap_or_default()
    }

    /// Appends `data:<mime>;base64,<bytes>` to `out`.
    pub fn write_data_url(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"data:");
        out.extend_from_slice(self.mime.as_bytes());
        out.extend_from_slice(b";base64,");
        let start = out.len();
        out.resize(start + self.bytes.len().div_ceil(3) * 4, 0);
        let written = base64::engine::general_purpose::STANDARD
            .encode_slice(&self.bytes, &mut out[start..])
            .unwrap_or(0);
        out.truncate(start + written);
    }

    /// Encoded size in bytes.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no bytes (never, for an image made by `from_bytes`).
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Placeholder used where the bytes must not appear (snapshots, cache keys, dry runs).
    pub fn placeholder(&self) -> String {
        format!("<image {} blake3:{}>", self.mime, self.short_hash())
    }
}

/// Largest width or height accepted when decoding; bigger images are refused as likely
/// decompression bombs (a 30,000 × 30,000 PNG is a few kilobytes but 2.7 GB of pixels).
pub const MAX_SIDE: u32 = 12_000;

/// Decodes encoded bytes into pixels, applying the EXIF orientation, within size limits.
pub fn decode(bytes: &[u8], what: &str) -> Result<image::DynamicImage, ImageError> {
    decode_oriented(bytes, what).map(|(img, _)| img)
}

/// As `decode`, also saying whether an EXIF orientation changed the pixels.
pub fn decode_oriented(
    bytes: &[u8],
    what: &str,
) -> Result<(image::DynamicImage, bool), ImageError> {
    use image::ImageDecoder as _;
    let mut decoder = limited_decoder(bytes, what)?;
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut img = image::DynamicImage::from_decoder(decoder).map_err(|e| decode_error(what, e))?;
    let rotated = orientation != image::metadata::Orientation::NoTransforms;
    img.apply_orientation(orientation);
    Ok((img, rotated))
}

/// A decoding error naming what was decoded.
fn decode_error(what: &str, e: impl std::fmt::Display) -> ImageError {
    ImageError::Decode {
        what: what.to_string(),
        message: e.to_string(),
    }
}

/// A decoder for encoded bytes (format sniffed) that refuses images over `MAX_SIDE` on a side
/// or over 1 GiB of pixels: the one setup `decode_oriented` and `probe` share.
fn limited_decoder<'a>(
    bytes: &'a [u8],
    what: &str,
) -> Result<impl image::ImageDecoder + 'a, ImageError> {
    let mut reader = image::ImageReader::new(std::io::Cursor::new(bytes))
        .with_guessed_format()
        .map_err(|e| decode_error(what, e))?;
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(MAX_SIDE);
    limits.max_image_height = Some(MAX_SIDE);
    limits.max_alloc = Some(1 << 30);
    reader.limits(limits);
    reader.into_decoder().map_err(|e| decode_error(what, e))
}

/// The longer side and the EXIF orientation of encoded bytes, read from the header alone (no
/// pixels are decoded), within the same size limits as `decode`.
fn probe(bytes: &[u8], what: &str) -> Result<(u32, image::metadata::Orientation), ImageError> {
    use image::ImageDecoder as _;
    let mut decoder = limited_decoder(bytes, what)?;
    let (w, h) = decoder.dimensions();
    if w == 0 || h == 0 || w > MAX_SIDE || h > MAX_SIDE {
        let message = format!("{w}×{h} pixels is outside 1..={MAX_SIDE} on a side");
        return Err(decode_error(what, message));
    }
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    Ok((w.max(h), orientation))
}

/// Encodes pixels as JPEG at quality 90 (RGB).
pub fn encode_jpeg(img: &image::DynamicImage, what: &str) -> Result<EncodedImage, ImageError> {
    let rgb = img.to_rgb8();
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 90)
        .encode_image(&rgb)
        .map_err(|e| ImageError::Decode {
            what: what.to_string(),
            message: format!("JPEG encoding failed: {e}"),
        })?;
    EncodedImage::from_bytes(out, what)
}

/// Encodes pixels as PNG.
pub fn encode_png(img: &image::DynamicImage, what: &str) -> Result<EncodedImage, ImageError> {
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .map_err(|e| ImageError::Decode {
            what: what.to_string(),
            message: format!("PNG encoding failed: {e}"),
        })?;
    EncodedImage::from_bytes(out.into_inner(), what)
}

/// Reads an image file for a role: its bytes as they are, unless the longer side exceeds
/// `max_side` or an EXIF orientation must be applied, in which case it is decoded, turned,
/// shrunk and re-encoded as JPEG. Whether to is read from the header alone, so a photo sent as it
/// is costs no pixel decoding (gallery images were fully decoded once, when indexed; a file cut
/// after that is sent as it is, and the server's refusal is recorded with that request).
pub fn load_for_role(path: &Path, max_side: Option<u32>) -> Result<EncodedImage, ImageError> {
    let original = EncodedImage::from_file(path)?;
    let what = path.display().to_string();
    // The header says whether anything must change; most photos are sent as they are, without
    // decoding megabytes of pixels first.
    let (side, orientation) = probe(original.bytes(), &what)?;
    let too_big = max_side.is_some_and(|m| side > m);
    if orientation == image::metadata::Orientation::NoTransforms && !too_big {
        return Ok(original);
    }
    let (pixels, _) = decode_oriented(original.bytes(), &what)?;
    let img = match max_side {
        Some(m) if too_big => pixels.resize(m, m, image::imageops::FilterType::Triangle),
        _ => pixels,
    };
    encode_jpeg(&img, &what)
}

/// Decodes a `data:` URL back into (mime, bytes); used by tests and the fake server.
pub fn decode_data_url(url: &str) -> Option<(String, Vec<u8>)> {
    let rest = url.strip_prefix("data:")?;
    let (meta, b64) = rest.split_once(',')?;
    let mime = meta.strip_suffix(";base64")?;
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
    Some((mime.to_string(), bytes))
}

fn sniff_mime(bytes: &[u8]) -> Option<&'static str> {
    use image::ImageFormat as F;
    Some(match image::guess_format(bytes).ok()? {
        F::Png => "image/png",
        F::Jpeg => "image/jpeg",
        F::WebP => "image/webp",
        F::Gif => "image/gif",
        F::Bmp => "image/bmp",
        F::Tiff => "image/tiff",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tiny_png() -> Vec<u8> {
        let img = image::RgbImage::from_pixel(3, 2, image::Rgb([200, 10, 10]));
        let mut out = std::io::Cursor::new(Vec::new());
        img.write_to(&mut out, image::ImageFormat::Png).unwrap();
        out.into_inner()
    }

    #[test]
    fn data_url_round_trips() {
        let bytes = tiny_png();
        let img = EncodedImage::from_bytes(bytes.clone(), "test").unwrap();
        assert_eq!(img.mime(), "image/png");
        let (mime, back) = decode_data_url(&img.data_url()).unwrap();
        assert_eq!(mime, "image/png");
        assert_eq!(back, bytes);
    }

    #[test]
    fn decompression_bombs_and_truncated_files_are_errors() {
        let big = image::GrayImage::new(MAX_SIDE + 1, 1);
        let mut out = std::io::Cursor::new(Vec::new());
        big.write_to(&mut out, image::ImageFormat::Png).unwrap();
        let err = decode(&out.into_inner(), "big.png")
            .unwrap_err()
            .to_string();
        assert!(err.contains("big.png"), "{err}");
        let png = tiny_png();
        assert!(decode(&png[..png.len() / 2], "cut.png").is_err());
        assert_eq!(decode(&png, "ok.png").unwrap().width(), 3);
    }

    /// A JPEG of `w`×`h` with an EXIF APP1 segment holding `orientation` (big-endian TIFF).
    fn jpeg_with_orientation(w: u32, h: u32, orientation: u8) -> Vec<u8> {
        let img = image::RgbImage::from_fn(w, h, |x, _| image::Rgb([(x * 20) as u8, 0, 0]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
            .encode_image(&img)
            .unwrap();
        let mut tiff = b"Exif\0\0MM\0\x2a\0\0\0\x08\0\x01".to_vec();
        tiff.extend_from_slice(&[0x01, 0x12, 0, 3, 0, 0, 0, 1, 0, orientation, 0, 0]);
        tiff.extend_from_slice(&[0, 0, 0, 0]);
        let len = u16::try_from(tiff.len() + 2).unwrap().to_be_bytes();
        let mut out = jpeg[..2].to_vec();
        out.extend_from_slice(&[0xFF, 0xE1, len[0], len[1]]);
        out.extend_from_slice(&tiff);
        out.extend_from_slice(&jpeg[2..]);
        out
    }

    #[test]
    fn a_photo_that_needs_nothing_is_sent_as_read_and_others_are_turned_or_shrunk() {
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("plain.jpg");
        std::fs::write(&plain, jpeg_with_orientation(40, 20, 1)).unwrap();
        let turned = dir.path().join("turned.jpg");
        std::fs::write(&turned, jpeg_with_orientation(40, 20, 6)).unwrap();

        let same = load_for_role(&plain, Some(40)).unwrap();
        assert_eq!(
            same.bytes(),
            std::fs::read(&plain).unwrap(),
            "not re-encoded"
        );
        let small = load_for_role(&plain, Some(10)).unwrap();
        let px = decode(small.bytes(), "small").unwrap();
        assert_eq!(
            (px.width(), px.height()),
            (10, 5),
            "shrunk to the longer side"
        );
        let upright = load_for_role(&turned, None).unwrap();
        assert_ne!(upright.bytes(), std::fs::read(&turned).unwrap());
        let px = decode(upright.bytes(), "upright").unwrap();
        assert_eq!(
            (px.width(), px.height()),
            (20, 40),
            "EXIF 6 turns it a quarter"
        );

        // A bomb is refused from its header, before any pixel is decoded.
        let bomb = dir.path().join("bomb.png");
        let big = image::GrayImage::new(MAX_SIDE + 1, 1);
        big.save(&bomb).unwrap();
        let err = load_for_role(&bomb, None).unwrap_err().to_string();
        assert!(err.contains("bomb.png"), "{err}");
    }

    #[test]
    fn non_image_bytes_are_refused_with_what() {
        let err = EncodedImage::from_bytes(b"hello".to_vec(), "notes.txt").unwrap_err();
        assert!(err.to_string().contains("notes.txt"));
    }
}
