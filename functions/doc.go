// Package functions is the SCF side of wsbridge: the registration, transfer
// and cleanup handlers that Tencent API Gateway invokes for WebSocket
// connect, message and disconnect events, as a library. The binaries in
// functions/register, functions/transfer, functions/cleanup and
// functions/websocket serve them with scfrpc.Start (under SCF exactly
// scf-go-lib's cloudfunction.Start; under `wsbridge gateway --functions`
// on a loopback listener the gateway hands over); the gateway emulator
// calls them in-process through Invoker.
//
// Every handler turns one gateway event into a JetStream-acknowledged message
// on the inbound subjects of the subjects package, so a nil error (or errNo 0)
// means the event is stored in WS_IN. A function process keeps one NATS
// connection, dialled on the first invocation and reused after, and bounds
// every NATS call by the invocation's deadline.
//
// The handlers never create streams: the bridge (or subjects.Provision)
// provisions them, and a missing stream is reported as ErrNotProvisioned.
package functions
