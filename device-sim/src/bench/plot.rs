//! SVG line charts of benchmark results (plotters, SVG backend only: text is written
//! as SVG `<text>` elements, so no font files or system libraries are needed).

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One line chart.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// File name suffix, e.g. `latency` (`<report>-latency.svg`).
    pub name: String,
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    /// Named series of `(x, y)` points.
    pub series: Vec<(String, Vec<(f64, f64)>)>,
}

/// Renders `plot` as an SVG document.
pub fn render_svg(plot: &Plot) -> Result<String> {
    let points = plot.series.iter().flat_map(|(_, p)| p.iter());
    let (mut x_max, mut y_max) = (0f64, 0f64);
    let (mut x_min, mut y_min) = (f64::MAX, 0f64);
    for &(x, y) in points {
        x_min = x_min.min(x);
        x_max = x_max.max(x);
        y_min = y_min.min(y);
        y_max = y_max.max(y);
    }
    if x_min > x_max {
        (x_min, x_max) = (0.0, 1.0);
    }
    if x_max <= x_min {
        x_max = x_min + 1.0;
    }
    if y_max <= y_min {
        y_max = y_min + 1.0;
    }
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (900, 500)).into_drawing_area();
        let err = |e: &dyn std::fmt::Display| anyhow!("plot {}: {e}", plot.name);
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(&plot.title, ("sans-serif", 20))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(70)
            .build_cartesian_2d(x_min..x_max, y_min..y_max * 1.05)
            .map_err(|e| err(&e))?;
        chart
            .configure_mesh()
            .x_desc(plot.x_label.as_str())
            .y_desc(plot.y_label.as_str())
            .draw()
            .map_err(|e| err(&e))?;
        for (i, (name, points)) in plot.series.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    points.iter().copied(),
                    color.stroke_width(2),
                ))
                .map_err(|e| err(&e))?
                .label(name.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
    }
    Ok(svg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_svg_with_text() {
        let plot = Plot {
            name: "latency".into(),
            title: "connect latency".into(),
            x_label: "nines".into(),
            y_label: "ms".into(),
            series: vec![
                ("certmq".into(), vec![(0.0, 1.0), (1.0, 2.0), (2.0, 5.0)]),
                ("mosquitto".into(), vec![(0.0, 2.0), (2.0, 9.0)]),
            ],
        };
        let svg = render_svg(&plot).expect("svg");
        assert!(svg.starts_with("<svg"), "{}", &svg[..50.min(svg.len())]);
        assert!(svg.contains("connect latency"));
        assert!(svg.contains("mosquitto"));
        assert!(svg.contains("<polyline") || svg.contains("<path"));
    }

    #[test]
    fn empty_and_flat_series_still_render() {
        let mut plot = Plot {
            name: "x".into(),
            title: "empty".into(),
            x_label: "x".into(),
            y_label: "y".into(),
            series: vec![],
        };
        assert!(render_svg(&plot).is_ok());
        plot.series
            .push(("flat".into(), vec![(3.0, 0.0), (3.0, 0.0)]));
        assert!(render_svg(&plot).is_ok());
    }
}
