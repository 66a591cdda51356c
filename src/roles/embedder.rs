//! Embedder: texts (target descriptions, captions) and images to vectors. The request shape
//! (vLLM `messages`, infinity, plain OpenAI `input`) is the servers file's choice and is written
//! by `serving::wire`; this role only decides what is embedded and guarantees unit length, so
//! inner products are cosine similarities whatever the server was configured to do.

use crate::chat::EmbedInput;
use crate::images::EncodedImage;

/// Inputs for a list of texts.
pub fn texts(texts: &[String]) -> Vec<EmbedInput> {
    texts.iter().map(|t| EmbedInput::Text(t.clone())).collect()
}

/// The input for one image.
pub fn image(img: EncodedImage) -> EmbedInput {
    EmbedInput::Image(img)
}

/// Scales `v` to unit length; `None` for a zero or non-finite vector, which cannot rank anything.
pub fn unit(mut v: Vec<f32>) -> Option<Vec<f32>> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !(norm.is_finite() && norm > 0.0) {
        return None;
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_vectors() {
        let v = unit(vec![3.0, 4.0]).unwrap();
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        assert!(unit(vec![0.0, 0.0]).is_none());
        assert!(unit(vec![f32::NAN]).is_none());
    }
}
