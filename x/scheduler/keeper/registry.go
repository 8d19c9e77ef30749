package keeper

import (
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"

	"github.com/devshard/devshard/x/scheduler/types"
)

// Registry holds the task types and the order their due tasks run in. Types
// are registered while the app is wired; Seal then sorts them so that a type
// runs after every type it depends on, breaking ties by name so that every
// node derives the same order. After Seal the registry is read-only.
type Registry struct {
	mu     sync.RWMutex
	defs   map[string]types.TaskDefinition
	order  []string
	rank   map[string]uint32
	sealed bool
}

// NewRegistry returns an empty registry.
func NewRegistry() *Registry {
	return &Registry{defs: map[string]types.TaskDefinition{}}
}

// Register adds task types. Dependencies may name types registered later;
// they are checked by Seal.
func (r *Registry) Register(defs ...types.TaskDefinition) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sealed {
		return fmt.Errorf("task types cannot be registered after the scheduler is sealed")
	}
	for _, d := range defs {
		switch {
		case d.Name == "":
			return fmt.Errorf("a task type needs a name")
		case d.Handler == nil:
			return fmt.Errorf("task type %q has no handler", d.Name)
		}
		if _, dup := r.defs[d.Name]; dup {
			return fmt.Errorf("task type %q is registered twice", d.Name)
		}
		r.defs[d.Name] = d
	}
	return nil
}

// Seal orders the types topologically. It rejects a dependency on a type that
// is not registered and a dependency cycle, naming the types involved.
func (r *Registry) Seal() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.sealed {
		return nil
	}
	names := slices.Sorted(maps.Keys(r.defs))
	for _, name := range names {
		for _, dep := range r.defs[name].DependsOn {
			if _, ok := r.defs[dep]; !ok {
				return fmt.Errorf("task type %q depends on %q, which is not registered", name, dep)
			}
			if dep == name {
				return fmt.Errorf("task types form a dependency cycle: %s -> %s", name, name)
			}
		}
	}

	// Kahn's algorithm, always taking the smallest ready name.
	placed := make(map[string]bool, len(names))
	order := make([]string, 0, len(names))
	for len(order) < len(names) {
		next := ""
		for _, name := range names {
			if placed[name] {
				continue
			}
			ready := true
			for _, dep := range r.defs[name].DependsOn {
				if !placed[dep] {
					ready = false
					break
				}
			}
			if ready {
				next = name
				break
			}
		}
		if next == "" {
			return fmt.Errorf("task types form a dependency cycle: %s", r.cycle(names, placed))
		}
		placed[next] = true
		order = append(order, next)
	}

	r.order = order
	r.rank = make(map[string]uint32, len(order))
	for i, name := range order {
		r.rank[name] = uint32(i)
	}
	r.sealed = true
	return nil
}

// cycle finds one cycle among the unplaced types, for the error message.
func (r *Registry) cycle(names []string, placed map[string]bool) string {
	var start string
	for _, name := range names {
		if !placed[name] {
			start = name
			break
		}
	}
	// Every unplaced type has an unplaced dependency, so walking those must
	// come back to a type already on the path.
	path := []string{start}
	at := map[string]int{start: 0}
	cur := start
	for {
		var dep string
		for _, d := range r.defs[cur].DependsOn {
			if !placed[d] {
				dep = d
				break
			}
		}
		if i, seen := at[dep]; seen {
			return strings.Join(append(path[i:], dep), " -> ")
		}
		at[dep] = len(path)
		path = append(path, dep)
		cur = dep
	}
}

// Sealed reports whether Seal has run.
func (r *Registry) Sealed() bool {
	r.mu.RLock()
	defer r.mu.RUnlock()
	return r.sealed
}

// lookup returns a type's definition and its rank (its place in the run order).
func (r *Registry) lookup(name string) (types.TaskDefinition, uint32, bool) {
	r.mu.RLock()
	defer r.mu.RUnlock()
	d, ok := r.defs[name]
	return d, r.rank[name], ok
}

// Types lists the registered types in run order (by name if not yet sealed).
func (r *Registry) Types() []types.TaskType {
	r.mu.RLock()
	defer r.mu.RUnlock()
	names := r.order
	if !r.sealed {
		names = slices.Sorted(maps.Keys(r.defs))
	}
	out := make([]types.TaskType, 0, len(names))
	for i, name := range names {
		out = append(out, types.TaskType{
			Name:      name,
			DependsOn: append([]string(nil), r.defs[name].DependsOn...),
			Rank:      uint32(i),
		})
	}
	return out
}
