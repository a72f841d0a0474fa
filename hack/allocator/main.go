// Command allocator runs the scheduler's own DRA allocator
// (k8s.io/dynamic-resource-allocation/structured) over ResourceSlices this
// driver publishes, so tests can hold the slices against what kube-scheduler
// would hand out without a cluster.
//
// Input (stdin, JSON): {"node": NAME, "classes": [DeviceClass], "slices":
// [ResourceSlice], "cases": [[ResourceClaim, ...], ...]}. Each case is
// allocated on its own, against nothing allocated yet. Output (stdout, JSON):
// one entry per case: null when the claims cannot be allocated together, the
// AllocationResults (one per claim) when they can, or {"error": TEXT} when
// the allocator refuses the input itself (a bad CEL expression, say).
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"time"

	v1 "k8s.io/api/core/v1"
	resourceapi "k8s.io/api/resource/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/sets"
	"k8s.io/dynamic-resource-allocation/cel"
	"k8s.io/dynamic-resource-allocation/structured"
)

type input struct {
	Node    string                         `json:"node"`
	Classes []*resourceapi.DeviceClass     `json:"classes"`
	Slices  []*resourceapi.ResourceSlice   `json:"slices"`
	Cases   [][]*resourceapi.ResourceClaim `json:"cases"`
	// Seconds one case may take (default 10): a search that runs longer is an error.
	Timeout float64 `json:"timeout"`
}

type classes []*resourceapi.DeviceClass

func (c classes) List() ([]*resourceapi.DeviceClass, error) { return c, nil }

func (c classes) Get(name string) (*resourceapi.DeviceClass, error) {
	for _, class := range c {
		if class.Name == name {
			return class, nil
		}
	}
	return nil, apierrors.NewNotFound(resourceapi.Resource("deviceclasses"), name)
}

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "allocator:", err)
		os.Exit(2)
	}
}

func run() error {
	var in input
	if err := json.NewDecoder(os.Stdin).Decode(&in); err != nil {
		return fmt.Errorf("reading the input: %w", err)
	}
	if in.Node == "" {
		return fmt.Errorf("input has no node")
	}
	timeout := 10 * time.Second
	if in.Timeout > 0 {
		timeout = time.Duration(in.Timeout * float64(time.Second))
	}
	features := structured.Features{PartitionableDevices: true}
	node := &v1.Node{ObjectMeta: metav1.ObjectMeta{Name: in.Node}}
	cache := cel.NewCache(100, cel.Features{})
	out := make([]any, 0, len(in.Cases))
	for _, claims := range in.Cases {
		state := structured.AllocatedState{
			AllocatedDevices:         sets.New[structured.DeviceID](),
			AllocatedSharedDeviceIDs: sets.New[structured.SharedDeviceID](),
			AggregatedCapacity:       structured.NewConsumedCapacityCollection(),
		}
		alloc, err := structured.NewAllocator(context.Background(), features, state, classes(in.Classes), in.Slices, cache)
		if err != nil {
			return fmt.Errorf("creating the allocator: %w", err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		results, err := alloc.Allocate(ctx, node, claims)
		cancel()
		switch {
		case err != nil:
			out = append(out, map[string]string{"error": err.Error()})
		case results == nil:
			out = append(out, nil)
		default:
			out = append(out, results)
		}
	}
	return json.NewEncoder(os.Stdout).Encode(out)
}
