//! Padding a batch of token ids and pooling the hidden states back to one vector per text.
//! Pure functions: padded positions are masked out, so a text's vector does not depend on
//! what else is in its batch.

use crate::Pooling;

/// Token ids padded (with 0, `[PAD]` in BERT vocabularies) to the batch's longest text,
/// row-major `[rows, width]`, and the attention mask (1 for a real token).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub ids: Vec<i64>,
    pub mask: Vec<i64>,
    pub width: usize,
}

/// Pads to the longest text (at least one column, so an empty encoding still runs).
pub fn pad_batch(texts: &[Vec<i64>]) -> Batch {
    let width = texts.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let mut ids = vec![0i64; texts.len() * width];
    let mut mask = vec![0i64; texts.len() * width];
    for (row, text) in texts.iter().enumerate() {
        let at = row * width;
        ids[at..at + text.len()].copy_from_slice(text);
        mask[at..at + text.len()].fill(1);
    }
    Batch { ids, mask, width }
}

/// One vector of `hidden_size` per row of `hidden` (`[rows, width, hidden_size]`): the mean
/// over tokens whose mask is 1, or the first token's; then L2-normalized when asked (as
/// sentence-transformers' Pooling and Normalize modules: counts clamped at 1e-9, norms at
/// 1e-12).
pub fn pool(
    hidden: &[f32],
    mask: &[i64],
    width: usize,
    hidden_size: usize,
    pooling: Pooling,
    normalize: bool,
) -> Vec<f32> {
    let rows = mask.len() / width.max(1);
    let mut out = vec![0f32; rows * hidden_size];
    for row in 0..rows {
        let vector = &mut out[row * hidden_size..(row + 1) * hidden_size];
        let tokens = &hidden[row * width * hidden_size..(row + 1) * width * hidden_size];
        match pooling {
            Pooling::Cls => vector.copy_from_slice(&tokens[..hidden_size]),
            Pooling::Mean => {
                let mut count = 0f32;
                for (t, token) in tokens.chunks_exact(hidden_size).enumerate() {
                    if mask[row * width + t] == 0 {
                        continue;
                    }
                    count += 1.0;
                    for (v, x) in vector.iter_mut().zip(token) {
                        *v += x;
                    }
                }
                let count = count.max(1e-9);
                vector.iter_mut().for_each(|v| *v /= count);
            }
        }
        if normalize {
            let norm = vector.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            vector.iter_mut().for_each(|v| *v /= norm);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for the model's hidden states that depends only on each token itself (as a
    /// transformer's does, under its attention mask): padded positions get garbage.
    fn hidden_of(batch: &Batch, d: usize) -> Vec<f32> {
        let mut out = Vec::with_capacity(batch.ids.len() * d);
        for (i, (&id, &m)) in batch.ids.iter().zip(&batch.mask).enumerate() {
            for k in 0..d {
                out.push(if m == 1 { (id as f32 + 1.0) * (k as f32 + 0.5) } else { 1e6 + i as f32 });
            }
        }
        out
    }

    #[test]
    fn batched_vectors_equal_one_at_a_time_and_padding_never_changes_a_vector() {
        let texts = vec![vec![101, 7, 8, 102], vec![101, 102], vec![101, 5, 6, 7, 8, 9, 102]];
        let d = 3;
        for pooling in [Pooling::Mean, Pooling::Cls] {
            let batch = pad_batch(&texts);
            assert_eq!(batch.width, 7);
            assert_eq!(&batch.mask[7..14], &[1, 1, 0, 0, 0, 0, 0]);
            let together = pool(&hidden_of(&batch, d), &batch.mask, batch.width, d, pooling, true);
            for (row, text) in texts.iter().enumerate() {
                let alone = pad_batch(std::slice::from_ref(text));
                let one = pool(&hidden_of(&alone, d), &alone.mask, alone.width, d, pooling, true);
                assert_eq!(&together[row * d..(row + 1) * d], one.as_slice(), "{pooling:?} row {row}");
            }
        }
    }

    #[test]
    fn mean_then_l2() {
        // Two real tokens [1, 0] and [3, 4], then one padded: mean [2, 2], normalized.
        let hidden = [1.0, 0.0, 3.0, 4.0, 99.0, 99.0];
        let v = pool(&hidden, &[1, 1, 0], 3, 2, Pooling::Mean, false);
        assert_eq!(v, vec![2.0, 2.0]);
        let v = pool(&hidden, &[1, 1, 0], 3, 2, Pooling::Mean, true);
        let s = std::f32::consts::FRAC_1_SQRT_2;
        assert!((v[0] - s).abs() < 1e-6 && (v[1] - s).abs() < 1e-6, "{v:?}");
        // A zero vector stays finite.
        assert_eq!(pool(&[0.0, 0.0], &[1], 1, 2, Pooling::Cls, true), vec![0.0, 0.0]);
    }
}
