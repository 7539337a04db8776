// Package gateway is the self-hosted WebSocket edge that replaces Tencent API
// Gateway's WebSocket API (SPEC §1, §6); `wsbridge gateway` runs it and
// `wsbridge dev` runs it as the emulator, so wsbridge can be run and tested on
// one machine.
//
// Like the real gateway it accepts WebSocket clients on one path, invokes a
// registration function before completing the upgrade, a transfer function
// for every client frame and a cleanup function exactly once when the
// connection ends, and serves a reverse-push address where a backend POSTs
// frames for clients or asks to close them.
//
// Functions are Invokers: the Go shape of scf-go-lib's cloudfunction.Handler,
// so in-process handlers plug in directly, and RPCInvoker talks to a real
// function binary over the SCF Go runtime's net/rpc protocol (StartFunctions
// starts either).
//
// With Options.NATS set the gateway is one edge instance of many (edge.go):
// its connection ids name it, it advertises its push address in the
// instances bucket, and it announces its connections' ends itself, shutdown
// when it stops and lost for instances that vanished. Listen and ServeAll
// add the production listeners (TLS, a separate push listener, /metrics,
// /healthz, /readyz) and their limits (serve.go, guard.go). The design and
// the settings are in README.md.
package gateway
