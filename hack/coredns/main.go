// The local node's cluster DNS: CoreDNS with only the plugins a cluster without an uplink needs. Names of
// Services under the cluster domain come from the kubernetes plugin; everything else is answered NXDOMAIN by
// the template plugin, so no query ever leaves the machine.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/template"
)

// The order in which the plugins see a query (CoreDNS's own order for these five).
var directives = []string{"errors", "health", "ready", "kubernetes", "template"}

func init() { dnsserver.Directives = directives }

func main() { coremain.Run() }
