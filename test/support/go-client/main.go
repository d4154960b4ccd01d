// A Go HTTP client for the sidecar's real-client tests: fetches one URL through the proxy named by
// HTTP_PROXY/HTTPS_PROXY (Go's own ProxyFromEnvironment), optionally with a method and a body, and prints
// "<status line>\n<body>". Standard library only.
package main

import (
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
)

func main() {
	method, url := os.Args[1], os.Args[2]
	var body io.Reader
	if len(os.Args) > 3 {
		body = strings.NewReader(os.Args[3])
	}
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(2)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("Accept", "application/json, text/event-stream")
	}
	client := &http.Client{Transport: &http.Transport{Proxy: http.ProxyFromEnvironment}}
	res, err := client.Do(req)
	if err != nil {
		fmt.Println("ERROR", err)
		os.Exit(1)
	}
	defer res.Body.Close()
	out, _ := io.ReadAll(res.Body)
	fmt.Printf("%s\n%s", res.Status, out)
}
