//! The SGD-vs-SAM comparison plot: train loss and test accuracy per epoch, as a PNG.

use crate::train::EpochMetrics;
use anyhow::{Context, Result};
use plotters::prelude::*;
use std::path::Path;

/// Registers the embedded font once (no system fonts needed).
fn font() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, dejavu::sans::regular());
    });
}

/// Draws `runs` (label, per-epoch metrics) side by side: train loss on the left, test
/// accuracy on the right; writes `path` (PNG) as [`crate::checkpoint::write_bytes_atomic`]
/// does (atomically; through a link, the file it leads to).
pub fn compare_png(path: &Path, title: &str, runs: &[(&str, &[EpochMetrics])]) -> Result<()> {
    font();
    // Drawn into a private folder first (the PNG encoder writes a file by name).
    let scratch = tempfile::tempdir().context("cannot create a temporary folder for the plot")?;
    let tmp = scratch.path().join("plot.png");
    draw(&tmp, title, runs).map_err(|e| anyhow::anyhow!("cannot draw {}: {e}", path.display()))?;
    let bytes = std::fs::read(&tmp).with_context(|| format!("cannot draw {}", path.display()))?;
    crate::checkpoint::write_bytes_atomic(path, &bytes).with_context(|| format!("cannot write {}", path.display()))
}

fn draw(path: &Path, title: &str, runs: &[(&str, &[EpochMetrics])]) -> Result<(), Box<dyn std::error::Error>> {
    let root = BitMapBackend::new(path, (1200, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, ("sans-serif", 22))?;
    let panels = root.split_evenly((1, 2));
    let epochs = runs.iter().map(|r| r.1.len()).max().unwrap_or(1).max(1);
    let colors = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44), RGBColor(148, 103, 189)];
    type Get = fn(&EpochMetrics) -> f64;
    let series: [(&str, Get); 2] = [("train loss", |m| m.train_loss), ("test accuracy", |m| m.test_accuracy)];
    for (panel, (name, get)) in panels.iter().zip(series) {
        let values: Vec<f64> = runs.iter().flat_map(|r| r.1.iter().map(get)).filter(|v| v.is_finite()).collect();
        let (lo, hi) = values.iter().fold((f64::MAX, f64::MIN), |(a, b), &v| (a.min(v), b.max(v)));
        let (lo, hi) = if values.is_empty() { (0.0, 1.0) } else { (lo, hi) };
        let pad = ((hi - lo) * 0.08).max(1e-3);
        let mut chart = ChartBuilder::on(panel)
            .caption(name, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(1f64..(epochs as f64).max(2.0), (lo - pad)..(hi + pad))?;
        chart.configure_mesh().x_desc("epoch").y_desc(name).draw()?;
        for (i, (label, m)) in runs.iter().enumerate() {
            let c = colors[i % colors.len()];
            chart
                .draw_series(LineSeries::new(m.iter().map(|e| (e.epoch as f64, get(e))), c.stroke_width(2)))?
                .label(*label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
            chart.draw_series(m.iter().map(|e| Circle::new((e.epoch as f64, get(e)), 3, c.filled())))?;
        }
        chart.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw()?;
    }
    root.present()?;
    Ok(())
}
