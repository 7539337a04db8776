// Command transfer is the wsbridge SCF Go function the transfer function: it publishes each client message of the gateway's data events to P.in.message.T.
//
// Build it for SCF with
//
//	GOOS=linux GOARCH=amd64 go build -o main ./functions/transfer && zip transfer.zip main
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
	scfrpc.Start(fn.Transfer)
}
