// Command validate decodes each document of a Kubernetes manifest strictly
// into the k8s.io/api type its apiVersion and kind name: an unknown field
// (a misspelt key, a key at the wrong level), a value of the wrong type or
// a quantity that does not parse is an error. It is a module of its own so
// that the kv module does not depend on k8s.io/api. check.sh runs it.
//
//	go run . ../kubernetes.yaml
package main

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"
)

var separator = regexp.MustCompile(`(?m)^---[ \t]*$`)

func main() {
	if len(os.Args) != 2 {
		fmt.Fprintln(os.Stderr, "usage: validate MANIFEST.yaml")
		os.Exit(2)
	}
	b, err := os.ReadFile(os.Args[1])
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	bad := 0
	for i, doc := range separator.Split(string(b), -1) {
		if strings.TrimSpace(doc) == "" {
			continue
		}
		if err := check([]byte(doc)); err != nil {
			fmt.Printf("document %d: %v\n", i+1, err)
			bad++
			continue
		}
	}
	if bad > 0 {
		os.Exit(1)
	}
}

func check(doc []byte) error {
	var head struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
		Metadata   struct {
			Name string `json:"name"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &head); err != nil {
		return err
	}
	var obj any
	switch head.APIVersion + " " + head.Kind {
	case "v1 Service":
		obj = &corev1.Service{}
	case "v1 ConfigMap":
		obj = &corev1.ConfigMap{}
	case "v1 Secret":
		obj = &corev1.Secret{}
	case "apps/v1 StatefulSet":
		obj = &appsv1.StatefulSet{}
	case "apps/v1 Deployment":
		obj = &appsv1.Deployment{}
	default:
		return fmt.Errorf("apiVersion %q kind %q: not known to this check", head.APIVersion, head.Kind)
	}
	if err := yaml.UnmarshalStrict(doc, obj); err != nil {
		return fmt.Errorf("%s %s: %w", head.Kind, head.Metadata.Name, err)
	}
	fmt.Printf("%s %s: decodes strictly as %s\n", head.Kind, head.Metadata.Name, head.APIVersion)
	return nil
}
