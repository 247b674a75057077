"""jobgate's benchmarks: refill latency, burst throughput, memory at scale, API cost, and this machine's ceiling.

Every figure comes from an independent watch of the API (`localcluster.jobwatch`)
or from the outside of the operator process (its RSS, its /metrics, the
apiserver's /metrics), never from the operator's own decisions. `python -m bench`
runs them on the local control plane and writes `bench/results/`.
"""
