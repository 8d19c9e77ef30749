// Command devshard is the single binary of the devshard network: the chain
// node, the host daemon, the gateway, the local network and the operator
// tools are its subcommands.
package main

import (
	"fmt"
	"os"
)

func main() {
	if err := newRootCommand().Execute(); err != nil {
		fmt.Fprintln(os.Stderr, "error:", err)
		os.Exit(1)
	}
}
