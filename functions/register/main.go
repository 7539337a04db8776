// Command register is the wsbridge SCF Go function the registration function: it answers the gateway's connecting events, registering each accepted connection and publishing P.in.connect.T.
//
// Build it for SCF with
//
//	GOOS=linux GOARCH=amd64 go build -o main ./functions/register && zip register.zip main
//
// Configuration comes from WSBRIDGE_* environment variables (see
// functions/README.md), read on the first invocation.
package main

import (
	"github.com/wsbridge/wsbridge/functions"
	"github.com/wsbridge/wsbridge/functions/scfrpc"
)

func main() {
	// Configuration is read lazily: SCF may supply environment variables
	// with the first invocation, and bad configuration must become a clear
	// answer to every invocation, not a crash loop.
	fn := functions.NewFromEnv(nil)
	scfrpc.Start(fn.Register)
}
