"""Evaluation: the runner over an eval split (`runner`), the images it writes (`images`) and the occupancy
export writers (`export_io`). The metric arithmetic lives in `selfocc_ns.metrics`."""
