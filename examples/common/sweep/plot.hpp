// The seed study's figure, as an SVG written by hand: the metric against the LR on a log10
// axis, one line per rank and a dashed one for FullFT, each line's optimum marked (a diamond),
// diverged LRs marked with a cross on the top edge; and the training-loss curves at one LR.
// render_png() (at the bottom) turns either into a PNG with an external converter
// (rsvg-convert, or ImageMagick's convert) when one is on PATH: the plots are SVG first, PNG
// where the machine can make one.
#pragma once

#include <fcntl.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "analysis.hpp"
#include "grid.hpp"
#include "robust.hpp"

extern char** environ;

namespace sweep {

namespace detail {

/// Text safe inside SVG.
inline std::string xml_escape(const std::string& s) {
  std::string out;
  for (const char c : s) {
    if (c == '&') out += "&amp;";
    else if (c == '<') out += "&lt;";
    else if (c == '>') out += "&gt;";
    else if (c == '"') out += "&quot;";
    else out += c;
  }
  return out;
}

/// A tick step of 1, 2 or 5 times a power of ten giving about `ticks` ticks over `range`.
inline double nice_step(double range, int ticks) {
  const double raw = range / ticks;
  const double p = std::pow(10.0, std::floor(std::log10(raw)));
  for (const double m : {1.0, 2.0, 5.0})
    if (m * p >= raw) return m * p;
  return 10 * p;
}

/// "3e-5": a compact LR for tick labels.
inline std::string short_lr(double lr) {
  const auto [digits, exponent] = shortest_digits(lr);
  std::string m = digits.substr(0, 1);
  if (digits.size() > 1) m += "." + digits.substr(1);
  return m + "e" + std::to_string(exponent);
}

/// The colour of the i-th line (matplotlib's ten).
inline const char* palette(size_t i) {
  static const char* colours[] = {"#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd",
                                  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f"};
  return colours[i % 10];
}

/// The layout both plots share: a W x H picture, the plot area inset by the margins, the legend
/// to its right.
struct Frame {
  double W = 820, H = 500, left = 80, right = 150, top = 50, bottom = 60;
  double pw = W - left - right, ph = H - top - bottom;  ///< the plot area's width and height
  double legend_x = left + pw + 15;
  /// The baseline of the i-th legend entry.
  double legend_y(size_t i) const { return top + 10 + 20 * static_cast<double>(i); }
};

/// How a line is drawn: its colour and its stroke-dasharray attribute ("" for a solid line).
struct LineStyle {
  std::string colour, dash;
};

/// The style of each of `lines` (anything with a `full` flag), in drawing order: FullFT black and
/// dashed, every other line the next colour of the palette.
template <typename Lines>
std::vector<LineStyle> line_styles(const Lines& lines) {
  std::vector<LineStyle> out;
  size_t colour = 0;
  for (const auto& line : lines)
    out.push_back(line.full ? LineStyle{"#000000", " stroke-dasharray=\"7 4\""} : LineStyle{palette(colour++), ""});
  return out;
}

/// Opens a line's group `id` and its polyline of stroke width `width`; the caller writes the
/// points and closes the polyline.
inline void begin_line(std::ostringstream& s, const std::string& id, const LineStyle& style, const char* width) {
  s << "<g id=\"" << xml_escape(id) << "\">\n<polyline fill=\"none\" stroke=\"" << style.colour << "\" stroke-width=\""
    << width << "\"" << style.dash << " points=\"";
}

/// The i-th line's legend entry (a stroke in its style, then `label`) and the end of its group.
inline void end_line(std::ostringstream& s, const Frame& f, size_t i, const LineStyle& style, const std::string& label) {
  const double ly = f.legend_y(i), lx = f.legend_x;
  s << "<line x1=\"" << lx << "\" y1=\"" << ly << "\" x2=\"" << lx + 28 << "\" y2=\"" << ly << "\" stroke=\""
    << style.colour << "\" stroke-width=\"2\"" << style.dash << "/>\n<text x=\"" << lx + 34 << "\" y=\"" << ly + 4
    << "\">" << xml_escape(label) << "</text>\n</g>\n";
}

/// The opening of a W x H plot: the XML declaration, <svg>, a white background and `title`
/// centred at `title_x`; `s` writes numbers with one decimal from here on.
inline void svg_begin(std::ostringstream& s, double W, double H, double title_x, const std::string& title) {
  s.setf(std::ios::fixed);
  s.precision(1);
  s << "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << W << "\" height=\"" << H << "\" viewBox=\"0 0 " << W
    << " " << H << "\" font-family=\"sans-serif\" font-size=\"12\">\n"
    << "<rect x=\"0\" y=\"0\" width=\"" << W << "\" height=\"" << H << "\" fill=\"white\"/>\n"
    << "<text x=\"" << title_x << "\" y=\"28\" text-anchor=\"middle\" font-size=\"15\">" << xml_escape(title)
    << "</text>\n";
}

}  // namespace detail

/// The y ticks of [lo, hi] (in plotted units): a 1-2-5 step, or, with `log_axis` (the units are
/// log10 of the value), the values 1, 2 and 5 times a power of ten (only the powers of ten when
/// those are many). Each tick is snapped to its step, so that zero prints as "0", not "-0".
inline std::vector<double> y_ticks(double lo, double hi, bool log_axis) {
  std::vector<double> out;
  if (!log_axis) {
    const double step = detail::nice_step(hi - lo, 6);
    for (double v = std::ceil(lo / step) * step; v <= hi + 1e-9 * step; v += step) {
      const double snapped = std::round(v / step) * step;
      out.push_back(std::abs(snapped) < 1e-9 * step ? 0.0 : snapped);
    }
    return out;
  }
  for (const std::vector<double>& mantissas : {std::vector<double>{1, 2, 5}, std::vector<double>{1}}) {
    out.clear();
    for (double e = std::floor(lo); e <= std::ceil(hi); ++e)
      for (const double m : mantissas) {
        const double v = std::log10(m) + e;
        if (v >= lo - 1e-9 && v <= hi + 1e-9) out.push_back(v);
      }
    if (out.size() <= 10) break;
  }
  return out;
}

/// The SVG of `curves` (from make_curves) and their `optima` (from find_optima); `fits`, when
/// given (one per curve, robust.hpp), marks each curve's optimum fitted without collapsed runs.
/// Cells where a run collapsed are drawn hollow; `log_y` plots the values on a log10 axis (for
/// a ratio-scale metric such as perplexity).
inline std::string plot_svg(const std::vector<Curve>& curves, const std::vector<Optimum>& optima,
                            const std::string& y_label, const std::string& title, bool log_y = false,
                            const std::vector<FitOptimum>& fits = {}) {
  const detail::Frame f{};
  const double W = f.W, H = f.H, left = f.left, top = f.top, pw = f.pw, ph = f.ph;
  // Plotted units: the value, or its log10. A mean - std at or below zero on a log axis is
  // drawn at half the mean.
  const auto T = [log_y](double v) { return log_y ? std::log10(v) : v; };
  const auto low_of = [log_y](const Cell& c) {
    const double lo = c.mean() - c.stddev();
    return log_y && !(lo > 0) ? c.mean() / 2 : lo;
  };

  // Data ranges: x = log10(LR) over every LR run, y over every finite value and optimum.
  std::set<double> lrs;
  double ymin = INFINITY, ymax = -INFINITY;
  const auto extend = [&](double v) {
    if (!std::isfinite(T(v))) return;
    ymin = std::min(ymin, T(v)), ymax = std::max(ymax, T(v));
  };
  for (size_t i = 0; i < curves.size(); ++i) {
    for (const auto& c : curves[i].cells) {
      lrs.insert(c.lr);
      if (c.valid()) extend(low_of(c)), extend(c.mean() + c.stddev());
    }
    if (optima[i].found) extend(optima[i].value);
    if (i < fits.size() && fits[i].found) extend(fits[i].value);
  }
  if (!std::isfinite(ymin)) ymin = 0, ymax = 1;
  if (ymax - ymin < 1e-12) ymin -= 0.5, ymax += 0.5;
  const double ypad = 0.08 * (ymax - ymin);
  ymin -= ypad, ymax += ypad;
  double xmin = lrs.empty() ? -5 : std::log10(*lrs.begin()), xmax = lrs.empty() ? -3 : std::log10(*lrs.rbegin());
  if (xmax - xmin < 1e-12) xmin -= 0.5, xmax += 0.5;
  const double xpad = 0.06 * (xmax - xmin);
  xmin -= xpad, xmax += xpad;
  const auto X = [&](double lr) { return left + (std::log10(lr) - xmin) / (xmax - xmin) * pw; };
  const auto Y = [&](double v) { return top + (ymax - T(v)) / (ymax - ymin) * ph; };
  const auto Yt = [&](double t) { return top + (ymax - t) / (ymax - ymin) * ph; };  // t in plotted units

  std::ostringstream s;
  detail::svg_begin(s, W, H, left + pw / 2, title);

  // Axes, grid lines and ticks: one x tick per LR run, y ticks from y_ticks().
  s << "<g stroke=\"#dddddd\" stroke-width=\"1\">\n";
  for (const double lr : lrs) s << "<line x1=\"" << X(lr) << "\" y1=\"" << top << "\" x2=\"" << X(lr) << "\" y2=\"" << top + ph << "\"/>\n";
  const auto yticks = y_ticks(ymin, ymax, log_y);
  for (const double t : yticks) s << "<line x1=\"" << left << "\" y1=\"" << Yt(t) << "\" x2=\"" << left + pw << "\" y2=\"" << Yt(t) << "\"/>\n";
  s << "</g>\n<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"black\"/>\n";
  for (const double lr : lrs)
    s << "<text x=\"" << X(lr) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">" << detail::short_lr(lr)
      << "</text>\n";
  for (const double t : yticks)
    s << "<text x=\"" << left - 6 << "\" y=\"" << Yt(t) + 4 << "\" text-anchor=\"end\">"
      << detail::num(log_y ? std::pow(10.0, t) : t, "%g") << "</text>\n";
  s << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">learning rate (log scale)</text>\n"
    << "<text x=\"20\" y=\"" << top + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 20 " << top + ph / 2
    << ")\">" << detail::xml_escape(y_label + (log_y ? " (log scale)" : "")) << "</text>\n";

  // One polyline per curve (diverged LRs left out), its points, its optimum and its legend entry.
  const auto styles = detail::line_styles(curves);
  bool any_collapsed = false;
  for (size_t i = 0; i < curves.size(); ++i) {
    const auto& c = curves[i];
    const std::string& col = styles[i].colour;
    detail::begin_line(s, c.column, styles[i], "2");
    for (const auto& cell : c.cells)
      if (cell.valid()) s << X(cell.lr) << "," << Y(cell.mean()) << " ";
    s << "\"/>\n";
    for (const auto& cell : c.cells) {
      if (cell.values.size() >= 2) {  // error bar: mean ± sample std over seeds
        const double x = X(cell.lr), lo = cell.mean() - cell.stddev(), hi = cell.mean() + cell.stddev();
        const double ylo = Y(low_of(cell)), yhi = Y(hi);
        s << "<path class=\"errorbar\" data-lr=\"" << lr_string(cell.lr) << "\" data-n=\"" << cell.values.size()
          << "\" data-mean=\"" << detail::num(cell.mean(), "%.17g") << "\" data-lo=\"" << detail::num(lo, "%.17g")
          << "\" data-hi=\"" << detail::num(hi, "%.17g") << "\" d=\"M" << x << "," << ylo << " L" << x << "," << yhi
          << " M" << x - 4 << "," << ylo << " L" << x + 4 << "," << ylo << " M" << x - 4 << "," << yhi << " L"
          << x + 4 << "," << yhi << "\" stroke=\"" << col << "\" stroke-width=\"1.2\"/>\n";
      }
      if (cell.valid()) {
        // Hollow: some run at this LR collapsed (its value is in the mean; the fit leaves it out).
        const bool hollow = cell.collapsed > 0;
        any_collapsed = any_collapsed || hollow;
        s << "<circle cx=\"" << X(cell.lr) << "\" cy=\"" << Y(cell.mean()) << "\" r=\"" << (hollow ? 4 : 3)
          << "\" fill=\"" << (hollow ? "white" : col) << "\"" << (hollow ? " stroke=\"" + col + "\" stroke-width=\"1.5\"" : "")
          << ">";
        if (hollow)
          s << "<title>" << detail::xml_escape(c.label) << " at LR " << lr_string(cell.lr) << ": " << cell.collapsed
            << "/" << cell.runs << " runs collapsed</title>";
        s << "</circle>\n";
      } else {
        const double x = X(cell.lr), y = top + 8;
        s << "<path d=\"M" << x - 4 << "," << y - 4 << " L" << x + 4 << "," << y + 4 << " M" << x - 4 << "," << y + 4
          << " L" << x + 4 << "," << y - 4 << "\" stroke=\"" << col << "\" stroke-width=\"2\"><title>"
          << detail::xml_escape(c.label) << " diverged at LR " << lr_string(cell.lr) << "</title></path>\n";
      }
    }
    if (optima[i].found) {
      const double x = X(optima[i].lr), y = Y(optima[i].value);
      s << "<path d=\"M" << x << "," << y - 7 << " L" << x + 7 << "," << y << " L" << x << "," << y + 7 << " L"
        << x - 7 << "," << y << " Z\" fill=\"white\" stroke=\"" << col << "\" stroke-width=\"2\"><title>"
        << detail::xml_escape(c.label) << " optimum: LR " << detail::num(optima[i].lr, "%.3g")
        << (optima[i].interpolated ? " (interpolated)" : " (grid point)") << "</title></path>\n";
    }
    if (i < fits.size() && fits[i].found) {  // a triangle pointing down at the fitted optimum
      const double x = X(fits[i].lr), y = Y(fits[i].value);
      s << "<path class=\"fit\" d=\"M" << x - 6 << "," << y - 12 << " L" << x + 6 << "," << y - 12 << " L" << x << ","
        << y - 2 << " Z\" fill=\"" << col << "\"><title>" << detail::xml_escape(c.label)
        << " optimum without collapsed runs (least squares): LR " << detail::num(fits[i].lr, "%.3g")
        << (fits[i].interpolated ? "" : " (not interpolated)") << "</title></path>\n";
    }
    detail::end_line(s, f, i, styles[i], c.label);
  }
  double ly = f.legend_y(curves.size()) + 6;
  const double lx = f.legend_x;
  s << "<path d=\"M" << lx + 14 << "," << ly - 6 << " L" << lx + 20 << "," << ly << " L" << lx + 14 << "," << ly + 6
    << " L" << lx + 8 << "," << ly << " Z\" fill=\"white\" stroke=\"black\"/>\n<text x=\"" << lx + 34 << "\" y=\""
    << ly + 4 << "\">optimum, 3 pts</text>\n";
  if (!fits.empty()) {
    ly += 20;
    s << "<path d=\"M" << lx + 8 << "," << ly - 6 << " L" << lx + 20 << "," << ly - 6 << " L" << lx + 14 << "," << ly + 4
      << " Z\" fill=\"black\"/>\n<text x=\"" << lx + 34 << "\" y=\"" << ly + 4 << "\">optimum, fit</text>\n";
  }
  if (any_collapsed) {
    ly += 20;
    s << "<circle cx=\"" << lx + 14 << "\" cy=\"" << ly << "\" r=\"4\" fill=\"white\" stroke=\"black\" "
      << "stroke-width=\"1.5\"/>\n<text x=\"" << lx + 34 << "\" y=\"" << ly + 4 << "\">runs collapsed</text>\n";
  }
  bool bars = false;
  for (const auto& c : curves)
    for (const auto& cell : c.cells) bars = bars || cell.values.size() >= 2;
  if (bars)
    s << "<text x=\"" << lx << "\" y=\"" << ly + 24 << "\" font-size=\"11\">bars: mean ± std</text>\n<text x=\"" << lx
      << "\" y=\"" << ly + 38 << "\" font-size=\"11\">over seeds</text>\n";
  s << "</svg>\n";
  return s.str();
}

/// The SVG of training-loss curves over optimizer steps (linear axes), e.g. every rank at one
/// learning rate: with alpha/r scaling the early parts of the LoRA curves should nearly coincide.
inline std::string loss_curves_svg(const std::vector<LossCurve>& curves, const std::string& title) {
  const detail::Frame f{};
  const double W = f.W, H = f.H, left = f.left, top = f.top, pw = f.pw, ph = f.ph;
  double xmax = 1, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& c : curves) {
    for (const auto st : c.step) xmax = std::max(xmax, static_cast<double>(st));
    for (const double l : c.loss) ymin = std::min(ymin, l), ymax = std::max(ymax, l);
  }
  if (!std::isfinite(ymin)) ymin = 0, ymax = 1;
  if (ymax - ymin < 1e-12) ymin -= 0.5, ymax += 0.5;
  const double ypad = 0.05 * (ymax - ymin);
  ymin -= ypad, ymax += ypad;
  const auto X = [&](double st) { return left + st / xmax * pw; };
  const auto Y = [&](double v) { return top + (ymax - v) / (ymax - ymin) * ph; };
  std::ostringstream s;
  detail::svg_begin(s, W, H, left + pw / 2, title);
  s << "<g stroke=\"#dddddd\" stroke-width=\"1\">\n";
  const double xstep = detail::nice_step(xmax, 8);
  for (double v = 0; v <= xmax + 1e-9; v += xstep)
    s << "<line x1=\"" << X(v) << "\" y1=\"" << top << "\" x2=\"" << X(v) << "\" y2=\"" << top + ph << "\"/>\n";
  for (const double v : y_ticks(ymin, ymax, false))
    s << "<line x1=\"" << left << "\" y1=\"" << Y(v) << "\" x2=\"" << left + pw << "\" y2=\"" << Y(v) << "\"/>\n";
  s << "</g>\n<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"black\"/>\n";
  for (double v = 0; v <= xmax + 1e-9; v += xstep)
    s << "<text x=\"" << X(v) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">" << detail::num(v, "%g")
      << "</text>\n";
  for (const double v : y_ticks(ymin, ymax, false))
    s << "<text x=\"" << left - 6 << "\" y=\"" << Y(v) + 4 << "\" text-anchor=\"end\">" << detail::num(v, "%g")
      << "</text>\n";
  s << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">optimizer step</text>\n"
    << "<text x=\"20\" y=\"" << top + ph / 2 << "\" text-anchor=\"middle\" transform=\"rotate(-90 20 " << top + ph / 2
    << ")\">training loss (mean over seeds)</text>\n";
  const auto styles = detail::line_styles(curves);
  for (size_t i = 0; i < curves.size(); ++i) {
    const auto& c = curves[i];
    detail::begin_line(s, c.label, styles[i], "1.6");
    for (size_t k = 0; k < c.step.size() && k < c.loss.size(); ++k)
      s << X(static_cast<double>(c.step[k])) << "," << Y(c.loss[k]) << " ";
    s << "\"/>\n";
    detail::end_line(s, f, i, styles[i], c.label);
  }
  s << "</svg>\n";
  return s.str();
}

/// The SVG of the optimal LR and the stability edge against LoRA's scale s (log-log): each
/// seed's values of each LoRA line with one scale, and the least-squares line through each set
/// with its slope (robust_analysis() with two or more scales).
inline std::string scale_svg(const RobustAnalysis& r, const std::string& title) {
  const detail::Frame f{};
  const double W = f.W, H = f.H, left = f.left, top = f.top, pw = f.pw, ph = f.ph;
  struct Dot {
    double x, y;  // log10 scale, log10 LR
    bool edge;
    std::string what;
  };
  std::vector<Dot> dots;
  for (const auto& c : r.columns) {
    if (c.full || !(c.scale > 0)) continue;
    for (const auto& [seed, o] : c.seeds)
      dots.push_back({std::log10(c.scale), std::log10(o.lr), false,
                      c.label + " seed " + std::to_string(seed) + ": optimum LR " + detail::num(o.lr, "%.3g")});
    for (const auto& [seed, e] : c.edges)
      if (e.found)
        dots.push_back({std::log10(c.scale), std::log10(e.lr), true,
                        c.label + " seed " + std::to_string(seed) + ": edge LR " + detail::num(e.lr, "%.3g")});
  }
  double xmin = INFINITY, xmax = -INFINITY, ymin = INFINITY, ymax = -INFINITY;
  for (const auto& d : dots) xmin = std::min(xmin, d.x), xmax = std::max(xmax, d.x), ymin = std::min(ymin, d.y), ymax = std::max(ymax, d.y);
  if (dots.empty()) xmin = ymin = 0, xmax = ymax = 1;
  if (xmax - xmin < 1e-12) xmin -= 0.5, xmax += 0.5;
  if (ymax - ymin < 1e-12) ymin -= 0.5, ymax += 0.5;
  const double xpad = 0.08 * (xmax - xmin), ypad = 0.1 * (ymax - ymin);
  xmin -= xpad, xmax += xpad, ymin -= ypad, ymax += ypad;
  const auto X = [&](double v) { return left + (v - xmin) / (xmax - xmin) * pw; };
  const auto Y = [&](double v) { return top + (ymax - v) / (ymax - ymin) * ph; };
  std::ostringstream s;
  detail::svg_begin(s, W, H, left + pw / 2, title);
  const auto xt = y_ticks(xmin, xmax, true), yt = y_ticks(ymin, ymax, true);
  s << "<g stroke=\"#dddddd\" stroke-width=\"1\">\n";
  for (const double v : xt) s << "<line x1=\"" << X(v) << "\" y1=\"" << top << "\" x2=\"" << X(v) << "\" y2=\"" << top + ph << "\"/>\n";
  for (const double v : yt) s << "<line x1=\"" << left << "\" y1=\"" << Y(v) << "\" x2=\"" << left + pw << "\" y2=\"" << Y(v) << "\"/>\n";
  s << "</g>\n<rect x=\"" << left << "\" y=\"" << top << "\" width=\"" << pw << "\" height=\"" << ph
    << "\" fill=\"none\" stroke=\"black\"/>\n";
  for (const double v : xt)
    s << "<text x=\"" << X(v) << "\" y=\"" << top + ph + 18 << "\" text-anchor=\"middle\">"
      << detail::num(std::pow(10.0, v), "%g") << "</text>\n";
  for (const double v : yt)
    s << "<text x=\"" << left - 6 << "\" y=\"" << Y(v) + 4 << "\" text-anchor=\"end\">"
      << detail::short_lr(std::pow(10.0, v)) << "</text>\n";
  s << "<text x=\"" << left + pw / 2 << "\" y=\"" << H - 15 << "\" text-anchor=\"middle\">LoRA scale s = alpha / r "
    << "(log scale)</text>\n<text x=\"20\" y=\"" << top + ph / 2 << "\" text-anchor=\"middle\" "
    << "transform=\"rotate(-90 20 " << top + ph / 2 << ")\">learning rate (log scale)</text>\n";
  const auto line = [&](const std::optional<Slope>& sl, const char* colour, const char* dash, size_t legend,
                        const std::string& what) {
    if (sl) {
      s << "<line class=\"slope\" x1=\"" << X(xmin) << "\" y1=\"" << Y(sl->intercept + sl->slope * xmin) << "\" x2=\""
        << X(xmax) << "\" y2=\"" << Y(sl->intercept + sl->slope * xmax) << "\" stroke=\"" << colour
        << "\" stroke-width=\"1.5\"" << dash << "/>\n";
    }
    const double ly = f.legend_y(legend);
    s << "<text x=\"" << f.legend_x << "\" y=\"" << ly + 4 << "\" fill=\"" << colour << "\">" << what << "</text>\n";
    if (sl)
      s << "<text x=\"" << f.legend_x << "\" y=\"" << ly + 18 << "\" font-size=\"11\">slope "
        << detail::num(sl->slope, "%.2f") << " [" << detail::num(sl->lo, "%.2f") << ", " << detail::num(sl->hi, "%.2f")
        << "]</text>\n";
  };
  for (const auto& d : dots) {
    if (d.edge)
      s << "<path d=\"M" << X(d.x) - 5 << "," << Y(d.y) + 4 << " L" << X(d.x) + 5 << "," << Y(d.y) + 4 << " L" << X(d.x)
        << "," << Y(d.y) - 5 << " Z\" fill=\"white\" stroke=\"#d62728\" stroke-width=\"1.5\"><title>"
        << detail::xml_escape(d.what) << "</title></path>\n";
    else
      s << "<circle cx=\"" << X(d.x) << "\" cy=\"" << Y(d.y) << "\" r=\"3.5\" fill=\"#1f77b4\"><title>"
        << detail::xml_escape(d.what) << "</title></circle>\n";
  }
  line(r.optimum_slope, "#1f77b4", "", 0, "optimum LR (dots)");
  line(r.edge_slope, "#d62728", " stroke-dasharray=\"6 4\"", 2, "edge LR (triangles)");
  s << "<text x=\"" << f.legend_x << "\" y=\"" << f.legend_y(4) + 4 << "\" font-size=\"11\">-1: LR follows 1/s</text>\n";
  s << "</svg>\n";
  return s.str();
}

// ---------------------------------------------------------------------------------------------
// PNG

namespace detail {

/// The full path of `program` on $PATH, or "".
inline std::string find_on_path(const std::string& program) {
  const char* path = std::getenv("PATH");
  std::istringstream dirs(path ? path : "");
  for (std::string dir; std::getline(dirs, dir, ':');) {
    const std::string candidate = (dir.empty() ? "." : dir) + "/" + program;
    if (::access(candidate.c_str(), X_OK) == 0) return candidate;
  }
  return "";
}

/// Runs `argv` (no shell) with its output discarded; true when it exits with status 0.
inline bool run_quietly(const std::vector<std::string>& argv) {
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, "/dev/null", O_WRONLY, 0);
  posix_spawn_file_actions_addopen(&actions, STDERR_FILENO, "/dev/null", O_WRONLY, 0);
  pid_t pid = 0;
  const int rc = ::posix_spawn(&pid, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  if (rc != 0) return false;
  int status = 0;
  while (::waitpid(pid, &status, 0) < 0)
    if (errno != EINTR) return false;
  return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

}  // namespace detail

/// Converts `svg` to `png` with rsvg-convert or convert (ImageMagick), whichever is on PATH
/// first. Returns a line saying what was written.
inline std::string render_png(const std::string& svg, const std::string& png) {
  if (const auto rsvg = detail::find_on_path("rsvg-convert"); !rsvg.empty()) {
    if (detail::run_quietly({rsvg, "-o", png, svg})) return "wrote " + png + " (rsvg-convert)";
    return "only SVG written: rsvg-convert failed on " + svg;
  }
  if (const auto convert = detail::find_on_path("convert"); !convert.empty()) {
    if (detail::run_quietly({convert, svg, png})) return "wrote " + png + " (ImageMagick convert)";
    return "only SVG written: ImageMagick convert failed on " + svg;
  }
  return "only SVG written: no rsvg-convert or convert on PATH to make a PNG";
}

}  // namespace sweep
