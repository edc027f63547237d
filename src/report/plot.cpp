#include "src/report/plot.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>

namespace pmamba::report {
namespace {

// Geometry of every plot, in SVG user units (the page scales it to its width).
constexpr double kWidth = 880, kHeight = 300;
constexpr double kLeft = 72, kRight = 18, kTop = 34, kBottom = 40;
constexpr double kPlotW = kWidth - kLeft - kRight, kPlotH = kHeight - kTop - kBottom;
constexpr size_t kMaxDots = 60;  // a series of at most this many points also gets a dot per point

std::string fmt(double v, int decimals = 1) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.*f", decimals, v);
  return buf;
}

// Pixel-column decimation: the first, lowest, highest and last point of each column, in order.
std::vector<std::pair<double, double>> decimate(const std::vector<std::pair<double, double>>& px) {
  if (px.size() <= kMaxVertices) return px;
  std::vector<std::pair<double, double>> out;
  size_t i = 0;
  while (i < px.size()) {
    const double col = std::floor(px[i].first);
    size_t j = i, lo = i, hi = i;
    while (j < px.size() && std::floor(px[j].first) == col) {
      // In SVG y grows downwards: the lowest value has the largest y.
      if (px[j].second > px[lo].second) lo = j;
      if (px[j].second < px[hi].second) hi = j;
      ++j;
    }
    std::set<size_t> keep = {i, lo, hi, j - 1};
    for (size_t k : keep) out.push_back(px[k]);
    i = j;
  }
  return out;
}

}  // namespace

std::string escape_html(const std::string& s) {
  std::string out;
  out.reserve(s.size());
  for (char c : s) {
    switch (c) {
      case '&': out += "&amp;"; break;
      case '<': out += "&lt;"; break;
      case '>': out += "&gt;"; break;
      case '"': out += "&quot;"; break;
      case '\'': out += "&#39;"; break;
      default: out += c;
    }
  }
  return out;
}

std::vector<double> nice_ticks(double lo, double hi, int target, bool integer) {
  if (!(hi > lo) || !std::isfinite(hi - lo)) return {lo};
  const double raw = (hi - lo) / std::max(1, target);
  const double mag = std::pow(10.0, std::floor(std::log10(raw)));
  double step = mag;
  for (double f : {1.0, 2.0, 5.0, 10.0}) {
    step = f * mag;
    if (step >= raw) break;
  }
  if (integer) step = std::max(1.0, std::round(step));
  std::vector<double> ticks;
  for (double k = std::ceil(lo / step - 1e-9); k * step <= hi + step * 1e-9 && ticks.size() < 100; k += 1) {
    double v = k * step;
    if (std::fabs(v) < step * 1e-9) v = 0;  // no "-0" or 1e-17 for zero
    ticks.push_back(v);
  }
  return ticks;
}

std::vector<std::string> tick_labels(const std::vector<double>& ticks) {
  const double spacing = ticks.size() > 1 ? std::fabs(ticks[1] - ticks[0]) : 1.0;
  double largest = 0;
  for (double t : ticks) largest = std::max(largest, std::fabs(t));
  // Plain decimals ("0.0004", "9000") while they stay short; exponents beyond.
  const bool plain = largest < 1e6 && spacing >= 1e-4;
  int start = plain ? std::max(0, static_cast<int>(std::ceil(-std::log10(spacing) - 1e-9))) : 1;
  std::vector<std::string> labels(ticks.size());
  for (int digits = start; digits <= 17; ++digits) {
    bool good = true;
    std::set<std::string> seen;
    for (size_t i = 0; i < ticks.size(); ++i) {
      char buf[64];
      std::snprintf(buf, sizeof buf, plain ? "%.*f" : "%.*g", digits, ticks[i]);
      labels[i] = buf;
      good = good && seen.insert(labels[i]).second &&
             std::fabs(std::strtod(buf, nullptr) - ticks[i]) <= spacing * 1e-6;
    }
    if (good) break;
  }
  return labels;
}

std::string render_svg(const Plot& p) {
  // The y range: every finite value of every series, padded by 5% (a flat line gets a band).
  double y_min = INFINITY, y_max = -INFINITY;
  std::set<double> xs;
  for (const auto& s : p.series) {
    for (const auto& [x, y] : s.points) {
      y_min = std::min(y_min, y);
      y_max = std::max(y_max, y);
      xs.insert(x);
    }
  }
  if (!(y_min <= y_max)) y_min = 0, y_max = 1;  // nothing finite to draw
  if (y_max - y_min <= std::fabs(y_max) * 1e-12) {
    const double pad = y_max == 0 ? 1.0 : std::fabs(y_max) * 0.05;
    y_min -= pad;
    y_max += pad;
  } else {
    const double pad = (y_max - y_min) * 0.05;
    y_min -= pad;
    y_max += pad;
  }
  double x_min = p.x_min, x_max = p.x_max;
  if (!(x_max > x_min)) x_min -= 1, x_max += 1;
  auto sx = [&](double x) { return kLeft + (x - x_min) / (x_max - x_min) * kPlotW; };
  auto sy = [&](double y) { return kTop + (y_max - y) / (y_max - y_min) * kPlotH; };

  std::ostringstream o;
  o << "<svg class=\"plot\" data-metric=\"" << escape_html(p.metric) << "\" data-points=\"" << xs.size()
    << "\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 " << kWidth << " " << kHeight << "\" width=\"" << kWidth
    << "\" height=\"" << kHeight << "\" role=\"img\">\n";
  o << "<title>" << escape_html(p.title) << "</title>\n";
  o << "<rect class=\"frame\" x=\"" << kLeft << "\" y=\"" << kTop << "\" width=\"" << kPlotW << "\" height=\"" << kPlotH
    << "\"/>\n";

  // Grid and tick labels.
  const std::vector<double> yt = nice_ticks(y_min, y_max, 5);
  const std::vector<std::string> yl = tick_labels(yt);
  o << "<g class=\"axis y\">\n";
  for (size_t i = 0; i < yt.size(); ++i) {
    const std::string y = fmt(sy(yt[i]));
    o << "<line class=\"grid\" x1=\"" << kLeft << "\" x2=\"" << kLeft + kPlotW << "\" y1=\"" << y << "\" y2=\"" << y
      << "\"/><text x=\"" << kLeft - 6 << "\" y=\"" << y << "\" dy=\"0.32em\" text-anchor=\"end\">" << escape_html(yl[i])
      << "</text>\n";
  }
  o << "</g>\n";
  const std::vector<double> xt = nice_ticks(x_min, x_max, 8, true);
  const std::vector<std::string> xl = tick_labels(xt);
  o << "<g class=\"axis x\">\n";
  for (size_t i = 0; i < xt.size(); ++i) {
    const std::string x = fmt(sx(xt[i]));
    o << "<line class=\"grid\" x1=\"" << x << "\" x2=\"" << x << "\" y1=\"" << kTop << "\" y2=\"" << kTop + kPlotH
      << "\"/><text x=\"" << x << "\" y=\"" << kTop + kPlotH + 16 << "\" text-anchor=\"middle\">" << escape_html(xl[i])
      << "</text>\n";
  }
  o << "<text class=\"label\" x=\"" << kLeft + kPlotW << "\" y=\"" << kTop + kPlotH + 32
    << "\" text-anchor=\"end\">step</text>\n</g>\n";

  for (const auto& [x, tip] : p.x_marks) {
    if (x < x_min || x > x_max) continue;
    const std::string px = fmt(sx(x));
    o << "<line class=\"mark\" x1=\"" << px << "\" x2=\"" << px << "\" y1=\"" << kTop << "\" y2=\"" << kTop + kPlotH
      << "\"><title>" << escape_html(tip) << "</title></line>\n";
  }

  // Series, then the legend above the plot area.
  for (const auto& s : p.series) {
    std::vector<std::pair<double, double>> px;
    px.reserve(s.points.size());
    for (const auto& [x, y] : s.points) px.emplace_back(sx(x), sy(y));
    const auto drawn = decimate(px);
    o << "<polyline class=\"series\" data-series=\"" << escape_html(s.name) << "\" data-points=\"" << s.points.size()
      << "\"";
    if (drawn.size() != px.size()) o << " data-drawn=\"" << drawn.size() << "\"";
    o << " fill=\"none\" stroke=\"" << escape_html(s.color) << "\" points=\"";
    for (size_t i = 0; i < drawn.size(); ++i) o << (i ? " " : "") << fmt(drawn[i].first) << "," << fmt(drawn[i].second);
    o << "\"/>\n";
    if (!s.points.empty() && s.points.size() <= kMaxDots) {
      o << "<g class=\"dots\" fill=\"" << escape_html(s.color) << "\">";
      for (const auto& [x, y] : px) o << "<circle cx=\"" << fmt(x) << "\" cy=\"" << fmt(y) << "\" r=\"2.5\"/>";
      o << "</g>\n";
    }
  }
  o << "<g class=\"legend\">\n";
  double lx = kLeft;
  for (const auto& s : p.series) {
    o << "<line x1=\"" << lx << "\" x2=\"" << lx + 22 << "\" y1=\"16\" y2=\"16\" stroke=\"" << escape_html(s.color)
      << "\" stroke-width=\"2.5\"/><text x=\"" << lx + 28 << "\" y=\"16\" dy=\"0.32em\">" << escape_html(s.label)
      << "</text>\n";
    lx += 28 + 7.5 * static_cast<double>(s.label.size()) + 24;
  }
  o << "</g>\n</svg>\n";
  return o.str();
}

}  // namespace pmamba::report
