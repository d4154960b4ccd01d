// A recording HTTP upstream with Go's net/http parsing habits, for the sidecar's differential tests.
// It listens on 127.0.0.1 (a free port), prints "PORT <n>", then one JSON line per request received:
// exactly what Go's server parsed (method, request URI, Host, headers, body). Standard library only.
package main

import (
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"sync"
	"time"
)

type record struct {
	Method  string              `json:"method"`
	URI     string              `json:"uri"`
	Host    string              `json:"host"`
	Headers map[string][]string `json:"headers"`
	Body    string              `json:"body"`
	TE      []string            `json:"te"`
}

func main() {
	var mu sync.Mutex
	enc := json.NewEncoder(os.Stdout)
	handler := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		mu.Lock()
		_ = enc.Encode(record{r.Method, r.RequestURI, r.Host, r.Header, string(body), r.TransferEncoding})
		mu.Unlock()
		if r.URL.Path == "/stream" {
			flusher, _ := w.(http.Flusher)
			for i := 0; i < 50; i++ {
				if _, err := fmt.Fprintf(w, "chunk %d\n", i); err != nil {
					return
				}
				flusher.Flush()
				time.Sleep(100 * time.Millisecond)
			}
			return
		}
		w.Header().Set("Content-Type", "text/plain")
		_, _ = io.WriteString(w, "go-ok")
	})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	// The test process holds our stdin: when it goes away (even killed), so do we.
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	fmt.Printf("PORT %d\n", ln.Addr().(*net.TCPAddr).Port)
	_ = http.Serve(ln, handler)
}
