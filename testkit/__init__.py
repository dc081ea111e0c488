"""What the tests and the benchmarks build and run with, kept out of the app: checkpoints made to
answer on script or run to the end, random-weight models of a released checkpoint's shapes, the
local engine as `main` builds it, the app launched in-process, model servers."""
