// Package demo is wsbridge's demonstration: a single-file chat page served
// next to the gateway emulator, and a business service on NATS behind it
// that welcomes each connection, echoes what it sends and broadcasts it to
// everyone else. The backend talks to WebSocket clients only through the
// subjects package, the way a real service would.
package demo
