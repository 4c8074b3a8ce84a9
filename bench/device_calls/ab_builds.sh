# The final iteration, this build against the build in .carry/old_src.tar (git archive OLD src), one machine.
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit
export PYTHONPATH=/tmp/site:$PWD/src:$PWD/bench PYTHONUNBUFFERED=1
mkdir -p /tmp/old && tar xf .carry/old_src.tar -C /tmp/old
timeout 120 python3 -m pytest -q -p no:cacheprovider tests/likelihood/test_likelihood_held_cross.py -k gpu > $OUT/pytest_gpu.txt 2>&1; tail -2 $OUT/pytest_gpu.txt
timeout ${TLIM:-480} python3 bench/final_iteration_ab.py --tutorial .carry/tutorial --state bench/results/tutorial_9437_reader_h100_it025-026_state.tgz --gpu --settings new old=PYTHONPATH=/tmp/site:/tmp/old/src new --out $OUT/ab.json 2>&1 | grep -v "Warning\|particles=" | tail -12
grep -h "phase_seconds\|work fine" /tmp/work/Refine3D/run.log | tail -4 > $OUT/last_phases.txt
