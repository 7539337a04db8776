// Command cleanup is the wsbridge SCF Go function the cleanup function: it handles the gateway's closing events, deleting the registry record and publishing P.in.disconnect.T.
//
// Build it for SCF with
//
//	GOOS=linux GOARCH=amd64 go build -o main ./functions/cleanup && zip cleanup.zip main
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
	scfrpc.Start(fn.Cleanup)
}
