// Command k8s is a multi-call binary holding the Kubernetes control plane
// components petrel's e2e fleet needs, built from the upstream Go modules.
//
// It dispatches on the basename of argv[0] (so symlinks named
// kube-apiserver, kube-controller-manager, kube-scheduler and kubectl work)
// or, failing that, on the first argument (`k8s kube-apiserver ...`).
//
// kwok is NOT in here: in the same module its requirements raise shared
// dependencies above what k8s.io/kubernetes pins (grpc v1.79.3 -> v1.81.1,
// otel v1.41 -> v1.44, oauth2, genproto...), so the control plane would not be
// built with upstream's dependency set. build-binaries.sh builds kwok on its
// own with `go install sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION` instead.
package main

import (
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"k8s.io/component-base/cli"
	"k8s.io/component-base/logs"
	kubectlcmd "k8s.io/kubectl/pkg/cmd"
	kubectlutil "k8s.io/kubectl/pkg/cmd/util"
	apiserver "k8s.io/kubernetes/cmd/kube-apiserver/app"
	controllermanager "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	scheduler "k8s.io/kubernetes/cmd/kube-scheduler/app"

	// Blank imports of the upstream mains (cmd/kube-*/*.go).
	_ "k8s.io/component-base/logs/json/register"          // JSON log format
	_ "k8s.io/component-base/metrics/prometheus/clientgo" // client-go metrics
	_ "k8s.io/component-base/metrics/prometheus/version"  // version metric
	_ "time/tzdata"                                       // CronJob time zones
)

var commands = map[string]func() int{
	"kube-apiserver": func() int { return cli.Run(apiserver.NewAPIServerCommand()) },
	"kube-controller-manager": func() int {
		return cli.Run(controllermanager.NewControllerManagerCommand())
	},
	"kube-scheduler": func() int {
		return cli.Run(scheduler.NewSchedulerCommand())
	},
	"kubectl": kubectl,
}

// kubectl mirrors k8s.io/kubernetes/cmd/kubectl/kubectl.go.
func kubectl() int {
	logs.GlogSetter(kubectlcmd.GetLogVerbosity(os.Args)) // nolint:errcheck
	command := kubectlcmd.NewDefaultKubectlCommand()
	if err := cli.RunNoErrOutput(command); err != nil {
		kubectlutil.CheckErr(err)
		return 1
	}
	return 0
}

func usage() int {
	names := make([]string, 0, len(commands))
	for n := range commands {
		names = append(names, n)
	}
	sort.Strings(names)
	fmt.Fprintf(os.Stderr, "usage: k8s {%s} [flags]\n", strings.Join(names, "|"))
	return 2
}

func main() {
	if run, ok := commands[filepath.Base(os.Args[0])]; ok {
		os.Exit(run())
	}
	if len(os.Args) < 2 {
		os.Exit(usage())
	}
	run, ok := commands[os.Args[1]]
	if !ok {
		os.Exit(usage())
	}
	// The components parse os.Args[1:]; drop the dispatcher's own argv[0].
	os.Args = os.Args[1:]
	os.Exit(run())
}
