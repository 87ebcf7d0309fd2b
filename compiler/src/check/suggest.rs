//! "Did you mean ...?" suggestions for misspelt keywords and names.

/// The candidate closest to `word`, if it is close enough to be a likely typo.
///
/// Matching ignores case and underscores first (`MaxPool2D` -> `max_pool2d`),
/// then accepts an optimal-string-alignment distance of at most
/// `max(1, len / 3)` (`conv2` -> `conv2d`, `activaton` -> `activation`), or a
/// prefix of at least three characters (`kernel` -> `kernel_size`).
pub fn did_you_mean<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let norm = |s: &str| s.to_ascii_lowercase().replace('_', "");
    // No name people type is this long; the distances would cost
    // O(len^2) per candidate for nothing.
    if word.len() > 64 {
        return None;
    }
    let w = norm(word);
    if w.is_empty() {
        return None;
    }
    if let Some(c) = candidates.iter().find(|c| norm(c) == w) {
        return Some(c);
    }
    let lower = word.to_ascii_lowercase();
    let mut best: Option<(usize, &'a str)> = None;
    for &c in candidates {
        let limit = (c.len().max(lower.len()) / 3).max(1);
        // The distance is at least the difference in length.
        if c.len().abs_diff(lower.len()) > limit && norm(c).len().abs_diff(w.len()) > limit {
            continue;
        }
        let d = strsim::osa_distance(&lower, c).min(strsim::osa_distance(&w, &norm(c)));
        if d <= limit && best.is_none_or(|(bd, _)| d < bd) {
            best = Some((d, c));
        }
    }
    if let Some((_, c)) = best {
        return Some(c);
    }
    if lower.len() >= 3 {
        return candidates.iter().copied().find(|c| c.starts_with(&lower));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::did_you_mean;

    #[test]
    fn typos() {
        let layers = [
            "conv2d",
            "max_pool2d",
            "avg_pool2d",
            "dense",
            "dropout",
            "flatten",
        ];
        assert_eq!(did_you_mean("conv2", &layers), Some("conv2d"));
        assert_eq!(did_you_mean("Conv2D", &layers), Some("conv2d"));
        assert_eq!(did_you_mean("maxpool2d", &layers), Some("max_pool2d"));
        assert_eq!(did_you_mean("dens", &layers), Some("dense"));
        assert_eq!(did_you_mean("flat", &layers), Some("flatten"));
        assert_eq!(did_you_mean("lstm", &layers), None);
        let args = [
            "filters",
            "kernel_size",
            "strides",
            "padding",
            "activation",
            "use_bias",
            "name",
        ];
        assert_eq!(did_you_mean("activaton", &args), Some("activation"));
        assert_eq!(did_you_mean("kernel", &args), Some("kernel_size"));
        assert_eq!(did_you_mean("stride", &args), Some("strides"));
        assert_eq!(did_you_mean("xyz", &args), None);
    }
}
