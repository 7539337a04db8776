// Package bridge is the wsbridge daemon: it consumes the outbound stream
// (P.out.>) through a durable pull consumer shared by every instance, turns
// each command into reverse pushes to the Tencent API Gateway (SPEC §1),
// dead-letters what cannot be delivered, keeps an in-memory index of the
// connection registry for broadcast, group and user sends, and serves the
// registry request-reply API.
//
// A Bridge is built by New from Options and Deps, run by Run (or Start and
// Stop), and reports readiness through Ready, so tests and the dev command
// embed the whole daemon in process. StartEmbeddedNATS runs a NATS server
// with JetStream in process for setups without NATS_URL.
package bridge
