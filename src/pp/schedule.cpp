#include "src/pp/schedule.h"

#include <algorithm>
#include <map>
#include <set>
#include <sstream>

namespace pmamba::pp {

const char* op_name(Op op) {
  switch (op) {
    case Op::kRecvAct: return "recv_act";
    case Op::kForward: return "forward";
    case Op::kSendAct: return "send_act";
    case Op::kRecvGrad: return "recv_grad";
    case Op::kBackward: return "backward";
    case Op::kSendGrad: return "send_grad";
  }
  return "?";
}

namespace {

void forward(std::vector<Action>& a, int s, int p, int mb) {
  if (s > 0) a.push_back({Op::kRecvAct, mb});
  a.push_back({Op::kForward, mb});
  if (s < p - 1) a.push_back({Op::kSendAct, mb});
}

void backward(std::vector<Action>& a, int s, int p, int mb) {
  if (s < p - 1) a.push_back({Op::kRecvGrad, mb});
  a.push_back({Op::kBackward, mb});
  if (s > 0) a.push_back({Op::kSendGrad, mb});
}

void check_sizes(int stages, int microbatches) {
  if (stages < 1) throw ScheduleError("a schedule needs at least 1 stage, not " + std::to_string(stages));
  if (microbatches < 1) throw ScheduleError("a schedule needs at least 1 microbatch, not " + std::to_string(microbatches));
}

}  // namespace

Schedule make_gpipe(int p, int m) {
  check_sizes(p, m);
  Schedule sch{"gpipe", p, m, std::vector<std::vector<Action>>(static_cast<size_t>(p))};
  for (int s = 0; s < p; ++s) {
    for (int i = 0; i < m; ++i) forward(sch.actions[s], s, p, i);
    for (int i = 0; i < m; ++i) backward(sch.actions[s], s, p, i);
  }
  return sch;
}

Schedule make_1f1b(int p, int m) {
  check_sizes(p, m);
  Schedule sch{"1f1b", p, m, std::vector<std::vector<Action>>(static_cast<size_t>(p))};
  for (int s = 0; s < p; ++s) {
    auto& a = sch.actions[s];
    const int warmup = std::min(p - s - 1, m);
    int f = 0, b = 0;
    for (; f < warmup; ++f) forward(a, s, p, f);
    for (; f < m; ++f, ++b) {  // steady state: one forward, then the oldest backward
      forward(a, s, p, f);
      backward(a, s, p, b);
    }
    for (; b < m; ++b) backward(a, s, p, b);
  }
  return sch;
}

Schedule make_forward_only(int p, int m) {
  check_sizes(p, m);
  Schedule sch{"forward", p, m, std::vector<std::vector<Action>>(static_cast<size_t>(p)), false};
  for (int s = 0; s < p; ++s) {
    for (int i = 0; i < m; ++i) forward(sch.actions[s], s, p, i);
  }
  return sch;
}

Schedule make_schedule(const std::string& name, int stages, int microbatches) {
  if (name == "gpipe") return make_gpipe(stages, microbatches);
  if (name == "1f1b") return make_1f1b(stages, microbatches);
  throw ScheduleError("unknown schedule '" + name + "' (expected gpipe or 1f1b)");
}

ScheduleStats check_schedule(const Schedule& sch) {
  const int p = sch.stages, m = sch.microbatches;
  auto fail = [&](const std::string& what) {
    throw ScheduleError("schedule " + sch.name + " (" + std::to_string(p) + " stages, " + std::to_string(m) +
                        " microbatches): " + what);
  };
  if (static_cast<int>(sch.actions.size()) != p) fail("has action lists for " + std::to_string(sch.actions.size()) + " stages");
  // Per stage: each forward and backward exactly once, backward after forward, sends and
  // receives only towards stages that exist, each message handled once.
  for (int s = 0; s < p; ++s) {
    std::map<std::pair<Op, int>, int> seen;
    for (const Action& a : sch.actions[s]) {
      if (a.mb < 0 || a.mb >= m) fail("stage " + std::to_string(s) + " has " + op_name(a.op) + " of microbatch " + std::to_string(a.mb));
      if (++seen[{a.op, a.mb}] > 1) fail("stage " + std::to_string(s) + " runs " + op_name(a.op) + " " + std::to_string(a.mb) + " twice");
      if (s == 0 && (a.op == Op::kRecvAct || a.op == Op::kSendGrad)) fail("stage 0 has " + std::string(op_name(a.op)) + " but no previous stage");
      if (s == p - 1 && (a.op == Op::kSendAct || a.op == Op::kRecvGrad)) fail("the last stage has " + std::string(op_name(a.op)) + " but no next stage");
      if (a.op == Op::kBackward && !seen.count({Op::kForward, a.mb})) fail("stage " + std::to_string(s) + " runs backward " + std::to_string(a.mb) + " before its forward");
      if (a.op == Op::kForward && s > 0 && !seen.count({Op::kRecvAct, a.mb})) fail("stage " + std::to_string(s) + " runs forward " + std::to_string(a.mb) + " before receiving its input");
      if (a.op == Op::kSendAct && !seen.count({Op::kForward, a.mb})) fail("stage " + std::to_string(s) + " sends activation " + std::to_string(a.mb) + " before computing it");
      if (a.op == Op::kBackward && s < p - 1 && !seen.count({Op::kRecvGrad, a.mb})) fail("stage " + std::to_string(s) + " runs backward " + std::to_string(a.mb) + " before receiving its gradient");
      if (a.op == Op::kSendGrad && !seen.count({Op::kBackward, a.mb})) fail("stage " + std::to_string(s) + " sends gradient " + std::to_string(a.mb) + " before computing it");
    }
    for (int i = 0; i < m; ++i) {
      if (!seen.count({Op::kForward, i})) fail("stage " + std::to_string(s) + " never runs forward " + std::to_string(i));
      if (!sch.training) {
        for (Op op : {Op::kRecvGrad, Op::kBackward, Op::kSendGrad}) {
          if (seen.count({op, i})) fail("stage " + std::to_string(s) + " of a forward-only schedule has " + op_name(op) + " " + std::to_string(i));
        }
      }
      if (sch.training && !seen.count({Op::kBackward, i})) fail("stage " + std::to_string(s) + " never runs backward " + std::to_string(i));
      if (s > 0 && !seen.count({Op::kRecvAct, i})) fail("stage " + std::to_string(s) + " never receives activation " + std::to_string(i));
      if (s < p - 1 && !seen.count({Op::kSendAct, i})) fail("stage " + std::to_string(s) + " never sends activation " + std::to_string(i) + " (stage " + std::to_string(s + 1) + " waits for it)");
      if (!sch.training) continue;
      if (s < p - 1 && !seen.count({Op::kRecvGrad, i})) fail("stage " + std::to_string(s) + " never receives gradient " + std::to_string(i));
      if (s > 0 && !seen.count({Op::kSendGrad, i})) fail("stage " + std::to_string(s) + " never sends gradient " + std::to_string(i) + " (stage " + std::to_string(s - 1) + " waits for it)");
    }
  }
  // Each link carries its messages in order: the receiver takes them in the order the sender
  // posts them. Gloo matches messages by tag and would not mind, but NCCL has no tags and pairs
  // sends with receives in issue order.
  auto order = [&](int s, Op op) {
    std::vector<int> v;
    for (const Action& a : sch.actions[s]) {
      if (a.op == op) v.push_back(a.mb);
    }
    return v;
  };
  auto list = [](const std::vector<int>& v) {
    std::string out;
    for (int x : v) out += (out.empty() ? "" : " ") + std::to_string(x);
    return out;
  };
  for (int s = 0; s + 1 < p; ++s) {
    if (order(s, Op::kSendAct) != order(s + 1, Op::kRecvAct)) {
      fail("stage " + std::to_string(s) + " sends activations in the order " + list(order(s, Op::kSendAct)) + " but stage " +
           std::to_string(s + 1) + " receives them in the order " + list(order(s + 1, Op::kRecvAct)));
    }
    if (order(s + 1, Op::kSendGrad) != order(s, Op::kRecvGrad)) {
      fail("stage " + std::to_string(s + 1) + " sends gradients in the order " + list(order(s + 1, Op::kSendGrad)) +
           " but stage " + std::to_string(s) + " receives them in the order " + list(order(s, Op::kRecvGrad)));
    }
  }
  // Simulate: sends are posted without waiting (a message appears on its channel), receives
  // block until their message is there. Any state where nobody can move is a deadlock.
  std::vector<size_t> pc(static_cast<size_t>(p), 0);
  std::set<std::tuple<int, Op, int>> channel;  // (receiving stage, receive op, mb)
  ScheduleStats st;
  st.peak_activations.assign(static_cast<size_t>(p), 0);
  std::vector<int> alive(static_cast<size_t>(p), 0);
  for (;;) {
    bool moved = false, done = true;
    for (int s = 0; s < p; ++s) {
      // Each stage advances through every action it can take now (one compute action per tick).
      bool computed = false;
      while (pc[s] < sch.actions[s].size()) {
        const Action& a = sch.actions[s][pc[s]];
        if (a.op == Op::kRecvAct || a.op == Op::kRecvGrad) {
          auto it = channel.find({s, a.op, a.mb});
          if (it == channel.end()) break;
          channel.erase(it);
        } else if (a.op == Op::kSendAct) {
          channel.insert({s + 1, Op::kRecvAct, a.mb});
        } else if (a.op == Op::kSendGrad) {
          channel.insert({s - 1, Op::kRecvGrad, a.mb});
        } else {
          if (computed) break;
          computed = true;
          alive[s] += a.op == Op::kForward ? 1 : -1;
          st.peak_activations[s] = std::max(st.peak_activations[s], alive[s]);
        }
        ++pc[s];
        moved = true;
      }
      done = done && pc[s] == sch.actions[s].size();
    }
    if (done) break;
    ++st.ticks;
    if (!moved) {
      std::ostringstream os;
      os << "deadlock: ";
      for (int s = 0; s < p; ++s) {
        if (pc[s] < sch.actions[s].size()) {
          const Action& a = sch.actions[s][pc[s]];
          os << "stage " << s << " waits at " << op_name(a.op) << " " << a.mb << "; ";
        }
      }
      fail(os.str());
    }
  }
  return st;
}

std::string print_schedule(const Schedule& sch) {
  std::ostringstream os;
  const ScheduleStats st = check_schedule(sch);
  os << "schedule " << sch.name << ": " << sch.stages << " stages, " << sch.microbatches << " microbatches, "
     << "theoretical bubble " << theoretical_bubble(sch.stages, sch.microbatches) << "\n";
  for (int s = 0; s < sch.stages; ++s) {
    os << "stage " << s << " (peak activations " << st.peak_activations[s] << "):";
    for (const Action& a : sch.actions[s]) {
      const char* code = "?";
      switch (a.op) {
        case Op::kRecvAct: code = "ra"; break;
        case Op::kForward: code = "F"; break;
        case Op::kSendAct: code = "sa"; break;
        case Op::kRecvGrad: code = "rg"; break;
        case Op::kBackward: code = "B"; break;
        case Op::kSendGrad: code = "sg"; break;
      }
      os << " " << code << a.mb;
    }
    os << "\n";
  }
  return os.str();
}

double theoretical_bubble(int p, int m) { return static_cast<double>(p - 1) / static_cast<double>(m + p - 1); }

}  // namespace pmamba::pp
