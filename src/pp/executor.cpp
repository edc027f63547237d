#include "src/pp/executor.h"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>
#include <chrono>

#include "src/pp/device.h"
#include "src/pp/transport.h"

namespace pmamba::pp {

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

StageResult run_stage(const StageStep& st) {
  model::MambaLMImpl& model = *st.model;
  const bool first = model.stage().is_first(), last = model.stage().is_last();
  size_t m = 0;
  for (const Action& a : *st.actions) m = std::max(m, static_cast<size_t>(a.mb) + 1);
  StageResult r;
  std::vector<at::Tensor> inputs(m), outputs(m), grads_in(m);
  if (last && st.training) {
    r.losses.resize(m);
    r.correct.assign(m, 0);
  }
  if (last && !st.training) r.outputs.resize(m);
  const auto shape = model.boundary_shape(st.rows, st.seq_len);
  const auto boptions = at::TensorOptions().dtype(model.residual_dtype()).device(st.device);
  auto name = [&](const char* what, int i) { return std::string(what) + " " + std::to_string(st.first_index + i); };
  c10::AutoGradMode grad_mode(st.training);
  const double t0 = now_s();
  // Activation high-water mark of this stage over the pipeline phase, measured: memory in use
  // above the phase's start after each action, less the parameter gradients (the first
  // backward allocates them, the same under every schedule). What the schedule's live
  // microbatch count predicts, in bytes.
  const int64_t mem0 = memory_in_use(st.device);
  int64_t peak = 0;
  auto sample_memory = [&]() {
    if (mem0 < 0) return;
    int64_t grads = st.gradient_bytes ? st.gradient_bytes() : 0;
    for (const auto& p : model.parameters()) {
      if (p.grad().defined()) grads += static_cast<int64_t>(p.grad().nbytes());
    }
    peak = std::max(peak, memory_in_use(st.device) - mem0 - grads);
  };
  for (const Action& a : *st.actions) {
    sample_memory();
    const int i = a.mb;
    switch (a.op) {
      case Op::kRecvAct: {
        at::Tensor t = at::empty(shape, boptions);
        const double w = now_s();
        st.tx->recv(t, st.prev, activation_tag(i), name("activation", i));
        r.idle_s += now_s() - w;
        inputs[i] = st.training ? t.requires_grad_(true) : t;
        break;
      }
      case Op::kForward: {
        const at::Tensor x = first ? st.input(i) : inputs[i];
        if (!st.training) inputs[i] = at::Tensor();
        // Autocast covers the forward only: backward ops follow the dtypes the forward chose.
        AutocastGuard autocast(st.device.type(), st.autocast);
        at::Tensor y = model.forward(x);
        if (last && st.training) {
          r.losses[i] = st.loss(i, y, &r.correct[i]);
        } else if (last) {
          r.outputs[i] = y;
        } else {
          outputs[i] = y;
        }
        break;
      }
      case Op::kSendAct:
        r.bytes_sent += static_cast<double>(outputs[i].nbytes());
        st.tx->isend(outputs[i].detach(), st.next, activation_tag(i), name("activation", i));
        if (!st.training) outputs[i] = at::Tensor();
        break;
      case Op::kRecvGrad: {
        at::Tensor t = at::empty(shape, boptions);
        const double w = now_s();
        st.tx->recv(t, st.next, gradient_tag(i), name("gradient", i));
        r.idle_s += now_s() - w;
        grads_in[i] = t;
        break;
      }
      case Op::kBackward:
        if (last) {
          r.losses[i].backward();
        } else {
          outputs[i].backward(grads_in[i]);
          outputs[i] = at::Tensor();
          grads_in[i] = at::Tensor();
        }
        if (st.after_backward) st.after_backward(i);
        break;
      case Op::kSendGrad:
        r.bytes_sent += static_cast<double>(inputs[i].grad().nbytes());
        st.tx->isend(inputs[i].grad(), st.prev, gradient_tag(i), name("gradient", i));
        inputs[i] = at::Tensor();
        break;
    }
  }
  sample_memory();
  if (st.tx) st.tx->wait_sends();
  r.pipe_s = now_s() - t0;
  r.activation_peak = mem0 < 0 ? -1 : peak;
  return r;
}

}  // namespace pmamba::pp
