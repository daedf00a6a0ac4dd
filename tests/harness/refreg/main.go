// refreg: an OCI registry with the referrers API, for acceld's tests.
//
// It serves go-containerregistry's in-memory registry (pkg/registry) with referrers support and
// logs "listening on ADDR" to stderr like docker-registry, so one fixture parses both.
package main

import (
	"flag"
	"log"
	"net"
	"net/http"
	"os"

	"github.com/google/go-containerregistry/pkg/registry"
)

func main() {
	addr := flag.String("addr", "127.0.0.1:0", "listen address (port 0: the kernel picks one)")
	disk := flag.String("disk", "", "keep blobs in this directory instead of memory")
	flag.Parse()

	logger := log.New(os.Stderr, "", log.LstdFlags)
	opts := []registry.Option{registry.WithReferrersSupport(true), registry.Logger(logger)}
	if *disk != "" {
		opts = append(opts, registry.WithBlobHandler(registry.NewDiskBlobHandler(*disk)))
	}

	listener, err := net.Listen("tcp", *addr)
	if err != nil {
		logger.Fatal(err)
	}
	logger.Printf("listening on %s", listener.Addr())
	logger.Fatal(http.Serve(listener, registry.New(opts...)))
}
