//! Keras-style training progress:
//!
//! ```text
//! Epoch 1/2
//! 141/141 [==============================] - 12s 85ms/step - loss: 0.5200 - accuracy: 0.8100 - val_loss: 0.4000 - val_accuracy: 0.8500
//! ```
//!
//! On a terminal the bar is redrawn as batches finish (indicatif); otherwise
//! (a pipe, a log file, CI) one plain line is printed per epoch.

use cnnc_runtime::train::{BatchProgress, EpochLogs, FitCallback};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::Write;
use std::time::Duration;

/// Where progress goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Stdout,
    Stderr,
}

/// A [`FitCallback`] that prints Keras's `verbose=1` display (terminal) or
/// `verbose=2` lines (not a terminal).
pub struct KerasProgress {
    sink: Sink,
    interactive: bool,
    show_accuracy: bool,
    bar: Option<ProgressBar>,
    last: Option<BatchProgress>,
}

impl KerasProgress {
    pub fn new(sink: Sink, interactive: bool, show_accuracy: bool) -> KerasProgress {
        KerasProgress {
            sink,
            interactive,
            show_accuracy,
            bar: None,
            last: None,
        }
    }

    fn line(&self, text: &str) {
        match self.sink {
            Sink::Stdout => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{text}");
                let _ = out.flush();
            }
            Sink::Stderr => eprintln!("{text}"),
        }
    }

    fn metrics(&self, loss: f64, accuracy: f64) -> String {
        let mut out = format!("loss: {loss:.4}");
        if self.show_accuracy {
            out += &format!(" - accuracy: {accuracy:.4}");
        }
        out
    }
}

/// Keras's time display: `12s`, `1:02`, `1:00:05`.
pub fn format_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs >= 3600 {
        format!("{}:{:02}:{:02}", secs / 3600, (secs % 3600) / 60, secs % 60)
    } else if secs >= 60 {
        format!("{}:{:02}", secs / 60, secs % 60)
    } else {
        format!("{secs}s")
    }
}

/// Keras's time per step: `85ms/step`, `950us/step`, `2s/step`.
pub fn format_per_step(total: Duration, steps: usize) -> String {
    let per = total.as_secs_f64() / steps.max(1) as f64;
    if per >= 1.0 {
        format!("{per:.0}s/step")
    } else if per >= 1e-3 {
        format!("{:.0}ms/step", per * 1e3)
    } else {
        format!("{:.0}us/step", per * 1e6)
    }
}

impl FitCallback for KerasProgress {
    fn on_epoch_begin(&mut self, epoch: usize, epochs: usize, steps: usize) {
        self.line(&format!("Epoch {epoch}/{epochs}"));
        self.last = None;
        if self.interactive {
            let width = steps.to_string().len();
            let target = match self.sink {
                Sink::Stdout => ProgressDrawTarget::stdout(),
                Sink::Stderr => ProgressDrawTarget::stderr(),
            };
            let bar = ProgressBar::with_draw_target(Some(steps as u64), target);
            let template = format!("{{pos:>{width}}}/{{len}} [{{bar:30}}] - {{msg}}");
            if let Ok(style) = ProgressStyle::with_template(&template) {
                bar.set_style(style.progress_chars("=>."));
            }
            self.bar = Some(bar);
        }
    }

    fn on_batch_end(&mut self, progress: &BatchProgress) {
        self.last = Some(*progress);
        if let Some(bar) = &self.bar {
            let per_step = progress.elapsed.as_secs_f64() / progress.step as f64;
            let eta = Duration::from_secs_f64(per_step * (progress.steps - progress.step) as f64);
            // Message first: `set_position` redraws (at most 20 times a second).
            bar.set_message(format!(
                "ETA: {} - {}",
                format_duration(eta),
                self.metrics(progress.loss, progress.accuracy)
            ));
            bar.set_position(progress.step as u64);
        }
    }

    fn on_validation_begin(&mut self) {
        if let (Some(bar), Some(last)) = (&self.bar, &self.last) {
            bar.set_message(format!(
                "{} - validating...",
                self.metrics(last.loss, last.accuracy)
            ));
        }
    }

    fn on_epoch_end(&mut self, logs: &EpochLogs) {
        let steps = self.last.map(|p| p.steps).unwrap_or(0);
        let elapsed = Duration::from_secs_f64(logs.seconds);
        let mut message = format!(
            "{} {} - {}",
            format_duration(elapsed),
            format_per_step(elapsed, steps),
            self.metrics(logs.loss, logs.accuracy)
        );
        if let Some(val_loss) = logs.val_loss {
            message += &format!(" - val_loss: {val_loss:.4}");
        }
        if let (Some(val_accuracy), true) = (logs.val_accuracy, self.show_accuracy) {
            message += &format!(" - val_accuracy: {val_accuracy:.4}");
        }
        match self.bar.take() {
            Some(bar) => {
                bar.finish_with_message(message);
                // indicatif leaves the cursor at the end of the finished bar.
                match self.sink {
                    Sink::Stdout => println!(),
                    Sink::Stderr => eprintln!(),
                }
            }
            None => self.line(&format!("{steps}/{steps} - {message}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_keras() {
        assert_eq!(format_duration(Duration::from_secs(12)), "12s");
        assert_eq!(format_duration(Duration::from_secs(62)), "1:02");
        assert_eq!(format_duration(Duration::from_secs(3605)), "1:00:05");
        assert_eq!(format_per_step(Duration::from_secs(12), 141), "85ms/step");
        assert_eq!(
            format_per_step(Duration::from_millis(95), 100),
            "950us/step"
        );
        assert_eq!(format_per_step(Duration::from_secs(6), 3), "2s/step");
    }
}
