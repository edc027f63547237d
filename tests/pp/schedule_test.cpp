#include <gtest/gtest.h>

#include "src/pp/schedule.h"
#include "tests/test_util.h"

namespace pmamba::pp {
namespace {

TEST(Schedule, GeneratedSchedulesPassTheStaticChecks) {
  for (const std::string name : {"gpipe", "1f1b"}) {
    for (int p = 1; p <= 8; ++p) {
      for (int m = 1; m <= 16; ++m) {
        const Schedule s = make_schedule(name, p, m);
        ScheduleStats st;
        ASSERT_NO_THROW(st = check_schedule(s)) << name << " p=" << p << " m=" << m;
        for (int k = 0; k < p; ++k) {
          // GPipe keeps every microbatch's activations; 1F1B at most its warm-up depth + 1.
          const int expect = name == "gpipe" ? m : std::min(p - k, m);
          EXPECT_EQ(st.peak_activations[k], expect) << name << " p=" << p << " m=" << m << " stage " << k;
        }
      }
    }
  }
}

TEST(Schedule, OneFOneBHasTheTextbookOrder) {
  const Schedule s = make_1f1b(4, 8);
  std::string stage0, stage3;
  for (const auto& a : s.actions[0]) {
    if (a.op == Op::kForward) stage0 += "F" + std::to_string(a.mb);
    if (a.op == Op::kBackward) stage0 += "B" + std::to_string(a.mb);
  }
  for (const auto& a : s.actions[3]) {
    if (a.op == Op::kForward) stage3 += "F" + std::to_string(a.mb);
    if (a.op == Op::kBackward) stage3 += "B" + std::to_string(a.mb);
  }
  EXPECT_EQ(stage0, "F0F1F2F3B0F4B1F5B2F6B3F7B4B5B6B7");
  EXPECT_EQ(stage3, "F0B0F1B1F2B2F3B3F4B4F5B5F6B6F7B7");
}

TEST(Schedule, BackwardsRunInMicrobatchOrderOnEveryStage) {
  // Gradient accumulation order must not depend on the schedule or the stage: it is what keeps
  // PP = k bitwise equal to PP = 1.
  for (const std::string name : {"gpipe", "1f1b"}) {
    const Schedule s = make_schedule(name, 3, 5);
    for (const auto& stage : s.actions) {
      int next = 0;
      for (const auto& a : stage) {
        if (a.op == Op::kBackward) {
          EXPECT_EQ(a.mb, next++) << name;
        }
      }
    }
  }
}

TEST(Schedule, RejectsAMissingReceive) {
  Schedule s = make_1f1b(3, 4);
  auto& st = s.actions[2];
  st.erase(std::find(st.begin(), st.end(), Action{Op::kRecvAct, 2}));
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError, "stage 2 runs forward 2 before receiving its input");
}

TEST(Schedule, RejectsAMissingSend) {
  Schedule s = make_gpipe(2, 3);
  auto& st = s.actions[1];
  st.erase(std::find(st.begin(), st.end(), Action{Op::kSendGrad, 1}));
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError, "stage 1 never sends gradient 1 (stage 0 waits for it)");
}

TEST(Schedule, RejectsADeadlock) {
  // Stage 0 waits for gradient 0 before sending activation 0, which stage 1 needs first.
  Schedule s = make_gpipe(2, 1);
  s.actions[0] = {{Op::kForward, 0}, {Op::kRecvGrad, 0}, {Op::kSendAct, 0}, {Op::kBackward, 0}};
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError, "deadlock: stage 0 waits at recv_grad 0; stage 1 waits at recv_act 0");
}

TEST(Schedule, RejectsMessagesTakenOffALinkOutOfOrder) {
  // Deadlock-free with tags (Gloo), but NCCL pairs messages by order and would hand
  // activation 0 to the receive meant for activation 1.
  Schedule s = make_gpipe(2, 2);
  s.actions[1] = {{Op::kRecvAct, 1}, {Op::kRecvAct, 0}, {Op::kForward, 0}, {Op::kForward, 1},
                  {Op::kBackward, 0}, {Op::kSendGrad, 0}, {Op::kBackward, 1}, {Op::kSendGrad, 1}};
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError,
                           "stage 0 sends activations in the order 0 1 but stage 1 receives them in the order 1 0");
  s = make_gpipe(2, 2);
  s.actions[0] = {{Op::kForward, 0}, {Op::kSendAct, 0}, {Op::kForward, 1}, {Op::kSendAct, 1},
                  {Op::kRecvGrad, 1}, {Op::kRecvGrad, 0}, {Op::kBackward, 0}, {Op::kBackward, 1}};
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError,
                           "stage 1 sends gradients in the order 0 1 but stage 0 receives them in the order 1 0");
}

TEST(Schedule, RejectsBackwardWithoutForwardAndDuplicates) {
  Schedule s = make_gpipe(1, 2);
  s.actions[0] = {{Op::kBackward, 0}, {Op::kForward, 0}, {Op::kForward, 1}, {Op::kBackward, 1}};
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError, "runs backward 0 before its forward");
  s.actions[0] = {{Op::kForward, 0}, {Op::kForward, 0}, {Op::kBackward, 0}};
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError, "runs forward 0 twice");
  s.actions[0] = {{Op::kForward, 0}, {Op::kBackward, 0}};
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError, "never runs forward 1");
  s = make_gpipe(2, 1);
  s.actions[0].push_back({Op::kRecvAct, 0});
  PMAMBA_EXPECT_THROW_WITH(check_schedule(s), ScheduleError, "stage 0 has recv_act but no previous stage");
}

TEST(Schedule, PrintsEveryStage) {
  const std::string out = print_schedule(make_1f1b(2, 2));
  EXPECT_NE(out.find("stage 0 (peak activations 2): F0 sa0 F1 sa1 rg0 B0 rg1 B1"), std::string::npos) << out;
  EXPECT_NE(out.find("stage 1 (peak activations 1): ra0 F0 B0 sg0 ra1 F1 B1 sg1"), std::string::npos) << out;
  EXPECT_NEAR(theoretical_bubble(4, 8), 3.0 / 11.0, 1e-12);
  PMAMBA_EXPECT_THROW_WITH(make_schedule("zb", 2, 2), ScheduleError, "unknown schedule 'zb'");
}

}  // namespace
}  // namespace pmamba::pp
