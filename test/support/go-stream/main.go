// A Go HTTP client that prints a response line by line as it arrives (for streamed responses such as SSE),
// through the proxy named by HTTP_PROXY/HTTPS_PROXY and trusting what SSL_CERT_FILE names (Go's own
// ProxyFromEnvironment and system roots). Prints "<status line>" first. Standard library only.
package main

import (
	"bufio"
	"fmt"
	"net/http"
	"os"
)

func main() {
	res, err := http.Get(os.Args[1])
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	defer res.Body.Close()
	fmt.Println(res.Status)
	scanner := bufio.NewScanner(res.Body)
	for scanner.Scan() {
		fmt.Println(scanner.Text())
	}
}
