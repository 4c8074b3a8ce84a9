# Where the host's time goes in iteration 4 of the tutorial job (HEALPix order 2, where the
# host sets the pace): the iteration from the committed iteration-3 state, once to compile
# Triton's kernels, then once with the main thread's stack sampled every millisecond
# (tutorial_bench.py --host_samples). Also the cost of dispatching a few small operators
# on this machine (bench/dispatch_cost.py), to set against the ~70 µs per operator.
set -o pipefail
. bench/device_calls/setup.sh
[ "${DISPATCH:-1}" = 1 ] && timeout ${DLIM:-60} python3 bench/dispatch_cost.py --out $OUT/dispatch_cost.json 2>&1 | tail -20
rm -f /tmp/work/ab_*.json
timeout ${TLIM:-420} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state bench/results/tutorial_9437_h100_it003_state.tgz --iter 4 --gpu --settings ${SETTINGS:-warm sampled=--host_samples} --out $OUT/ab.json 2>&1 | grep -v "Warning\|particles=" | tail -6
cp /tmp/work/ab_*.json $OUT/ 2>/dev/null
python3 - <<'PY'
import glob, json, os
from host_samples import HostSampler
for path in sorted(glob.glob("/tmp/work/ab_*.json")):
    summary = json.load(open(path))
    if "host_samples" in summary:
        text = HostSampler.from_dict(summary["host_samples"]).table(60)
        name = os.path.basename(path)[:-5] + "_host_samples.txt"
        open(os.path.join(os.environ["OUT"], name), "w").write(text)
        print(text[:5000])
PY
