// The pause process of the local node's pod sandboxes: it holds the pod's namespaces open as PID 1,
// reaps orphaned children (PID 1 inherits them) and exits on SIGINT/SIGTERM. Built statically by
// hack/build-node-binaries.sh and packed as the sandbox image by hack/build-image.sh, so no registry is needed.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM, syscall.SIGCHLD)
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
