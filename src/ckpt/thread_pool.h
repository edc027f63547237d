// A small fixed-size thread pool for chunk compression and decompression.
#pragma once

#include <cerrno>
#include <condition_variable>
#include <deque>
#include <functional>
#include <future>
#include <mutex>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "src/ckpt/errors.h"
#include "src/ckpt/fault.h"

namespace pmamba::ckpt {

class ThreadPool {
 public:
  /// Throws ResourceError when a thread cannot be created (the ones already started are
  /// stopped first: a joinable std::thread destroyed during unwinding would terminate).
  explicit ThreadPool(int threads) {
    int i = 0;
    try {
      for (; i < threads; ++i) {
        if (fault_injected("thread", i)) throw std::system_error(EAGAIN, std::generic_category());
        workers_.emplace_back([this] { loop(); });
      }
    } catch (const std::system_error& e) {
      stop();
      throw ResourceError("cannot start thread " + std::to_string(i + 1) + " of " + std::to_string(threads) +
                          " for checkpoint I/O: " + e.code().message() + " (too many threads or processes?)");
    }
  }
  ~ThreadPool() { stop(); }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  /// Runs fn on a worker; the future rethrows fn's exception.
  template <typename Fn>
  std::future<void> submit(Fn fn) {
    auto task = std::make_shared<std::packaged_task<void()>>(std::move(fn));
    std::future<void> f = task->get_future();
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.emplace_back([task] { (*task)(); });
    }
    cv_.notify_one();
    return f;
  }

  int size() const { return static_cast<int>(workers_.size()); }

  /// Threads to use by default: hardware concurrency, at least 1.
  static int default_threads() {
    const unsigned n = std::thread::hardware_concurrency();
    return n == 0 ? 1 : static_cast<int>(n);
  }

 private:
  void stop() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
    workers_.clear();
  }

  void loop() {
    for (;;) {
      std::function<void()> job;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        job = std::move(queue_.front());
        queue_.pop_front();
      }
      job();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
  bool stop_ = false;
};

}  // namespace pmamba::ckpt
