// Command etcd is etcd's server built from go.etcd.io/etcd/server/v3 (the
// upstream root main.go is exactly this; `go install` of the server module is
// impossible because its go.mod carries replace directives).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
