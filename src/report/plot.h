// Line plots as inline SVG (no script, no external resources), and the HTML escaping every
// piece of text put into the report goes through.
//
// The markup is meant to be checked by tests as much as looked at:
//   <svg class="plot" data-metric="NAME" data-points="N"> ... </svg>
//       N = the number of distinct steps at which at least one series has a point;
//   <polyline class="series" data-series="NAME" data-points="N" points="x,y x,y ...">
//       N = the finite values of that series (an eval series has points only at the steps that
//       evaluated). A series of more than kMaxVertices points is drawn through the first, lowest,
//       highest and last point of each pixel column; data-points still counts them all and
//       data-drawn says how many vertices were drawn.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace pmamba::report {

/// `s` with & < > " ' replaced by character references: safe as element text and as a quoted
/// attribute value.
std::string escape_html(const std::string& s);

/// Round numbers spanning [lo, hi] ("nice" steps of 1, 2 or 5 times a power of ten), about
/// `target` of them; `integer` keeps the step at 1 or more. lo < hi.
std::vector<double> nice_ticks(double lo, double hi, int target, bool integer = false);
/// Labels for `ticks` (evenly spaced): plain decimals as many as the spacing needs ("0.0002",
/// "9000"), or for very large or finely spaced values the fewest significant digits ("2e-05")
/// that tell them apart and give each back to within a millionth of the spacing.
std::vector<std::string> tick_labels(const std::vector<double>& ticks);

struct Series {
  std::string name;   // data-series: the metrics key ("loss", "eval_loss", ...)
  std::string label;  // legend text
  std::string color;  // a CSS colour
  std::vector<std::pair<double, double>> points;  // (step, value), finite, by ascending step
  int64_t non_finite = 0;  // values written as null (NaN/inf) and left out of `points`
};

struct Plot {
  std::string metric;  // data-metric
  std::string title;
  std::vector<Series> series;
  double x_min = 0, x_max = 1;  // the x range (shared by every plot of a report)
  std::vector<std::pair<double, std::string>> x_marks;  // vertical dashed lines (x, tooltip)
};

/// Maximum polyline vertices drawn per series (see the file comment).
inline constexpr size_t kMaxVertices = 4000;

/// The plot as one <svg> element: axes with tick labels, a legend, one polyline per series (and
/// a dot per point for series of few points, so a lone eval point shows).
std::string render_svg(const Plot& plot);

}  // namespace pmamba::report
