// `latest` and the step directories a root's resolution reads: any content of `latest` (or of
// a step directory's manifest, read for its run id) resolves to a committed checkpoint or is
// refused with a FormatError naming what was found.
#include <unistd.h>

#include "src/ckpt/checkpoint.h"
#include "src/ckpt/fs.h"
#include "tests/fuzz/fuzz_util.h"

using namespace pmamba;

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz::Input in(data, size);
  const std::string root = fuzz::scratch("latest");
  // Two committed step directories of one run, one of another, one that is not committed.
  const std::string run = std::string(32, 'a');
  for (const char* step : {"step-00000001", "step-00000002", "step-00000009"}) {
    ckpt::fs::make_dirs(root + "/" + step);
    fuzz::write_bytes(root + "/" + step + "/manifest.json",
                      std::string("{\"run_id\": \"") + (step[12] == '9' ? std::string(32, 'b') : run) + "\"}");
  }
  ckpt::fs::make_dirs(root + "/step-00000005");
  switch (in.byte() % 4) {
    case 0:  // latest holds anything
      fuzz::write_bytes(root + "/latest", in.rest());
      break;
    case 1:  // a step directory's manifest holds anything
      fuzz::write_bytes(root + "/step-00000002/manifest.json", in.rest());
      fuzz::write_bytes(root + "/latest", "step-00000001\n");
      break;
    case 2: {  // latest is a symbolic link to a name from the input
      const std::string target = in.text(64);
      if (target.find('\0') == std::string::npos && ::symlink(target.c_str(), (root + "/latest").c_str()) != 0) return 0;
      break;
    }
    default:  // no latest at all, and the rest of the input as a stray temporary
      fuzz::write_bytes(root + "/step-00000003.tmp-1-2-3", in.rest());
      break;
  }
  fuzz::expect_clean("resolve_checkpoint_dir", [&] {
    std::string note;
    ckpt::resolve_checkpoint_dir(root, &note);
  });
  fuzz::expect_clean("committed_checkpoints", [&] { ckpt::committed_checkpoints(root); });
  fuzz::expect_clean("root_run_id", [&] { ckpt::root_run_id(root); });
  return 0;
}
