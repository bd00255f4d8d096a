// Package lgbm loads a LightGBM text model (booster.save_model) with the pure-Go reader
// github.com/dmitryikh/leaves and predicts with it: class probabilities and labels for the
// binary and multiclass objectives, a value per row for the others.
package lgbm

import (
	"bufio"
	"bytes"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/dmitryikh/leaves"
)

// Task is what the model answers.
type Task int

const (
	// Regression models answer one value per row.
	Regression Task = iota
	// Classification models answer class probabilities (labels are their argmax).
	Classification
)

// Model is a loaded LightGBM model; safe for concurrent use.
type Model struct {
	ensemble  *leaves.Ensemble
	Task      Task
	NFeatures int
	// NClasses is the number of probability columns (2 for a binary objective).
	NClasses  int
	Objective string
	binary    bool
	threads   int
}

// header reads the key=value lines before the first blank line.
func header(text []byte) map[string]string {
	params := map[string]string{}
	scanner := bufio.NewScanner(bytes.NewReader(text))
	scanner.Buffer(make([]byte, 1024*1024), 64*1024*1024)
	for scanner.Scan() {
		line := strings.TrimSpace(scanner.Text())
		if line == "" {
			if len(params) > 0 {
				break
			}
			continue
		}
		key, value, _ := strings.Cut(line, "=")
		params[key] = value
	}
	return params
}

// Load reads a LightGBM text model. threads is how many goroutines one prediction may use.
//
// leaves (last released in 2023) accepts the format versions v2 and v3 only. LightGBM 4
// writes v4, which differs from v3 in what leaves reads only by linear trees
// (is_linear=1, which leaves cannot evaluate): a v4 file without them is read as v3, and
// one with them is refused.
func Load(path string, threads int) (*Model, error) {
	text, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	params := header(text)
	version := params["version"]
	switch version {
	case "v2", "v3":
	case "v4":
		if bytes.Contains(text, []byte("\nis_linear=1")) {
			return nil, fmt.Errorf("%s: linear trees (linear_tree=true) are not supported", path)
		}
		text = bytes.Replace(text, []byte("version=v4"), []byte("version=v3"), 1)
	default:
		return nil, fmt.Errorf("%s: not a LightGBM text model of a known version (version=%q)", path, version)
	}
	objective := strings.Fields(params["objective"])
	if len(objective) == 0 {
		return nil, fmt.Errorf("%s: no objective in the model header", path)
	}
	ensemble, err := leaves.LGEnsembleFromReader(bufio.NewReader(bytes.NewReader(text)), true)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if threads < 1 {
		threads = 1
	}
	m := &Model{
		ensemble:  ensemble,
		NFeatures: ensemble.NFeatures(),
		Objective: strings.Join(objective, " "),
		threads:   threads,
	}
	if n, err := strconv.Atoi(params["max_feature_idx"]); err == nil && n+1 > m.NFeatures {
		m.NFeatures = n + 1
	}
	switch objective[0] {
	case "binary":
		m.Task, m.NClasses, m.binary = Classification, 2, true
	case "multiclass", "softmax":
		m.Task, m.NClasses = Classification, ensemble.NOutputGroups()
	default:
		if ensemble.NOutputGroups() != 1 {
			return nil, fmt.Errorf("%s: objective %q with %d outputs per row is not supported",
				path, m.Objective, ensemble.NOutputGroups())
		}
		m.Task = Regression
	}
	return m, nil
}

// Predict answers rows (row-major, NFeatures columns each): for a classifier, probabilities
// (rows x NClasses, row-major) and labels; for a regressor, one value per row (labels nil).
func (m *Model) Predict(rows []float64, nRows int) ([]float64, []int64, error) {
	groups := m.ensemble.NOutputGroups()
	raw := make([]float64, nRows*groups)
	if nRows == 0 {
		if m.Task == Classification {
			return []float64{}, []int64{}, nil
		}
		return raw, nil, nil
	}
	if err := m.ensemble.PredictDense(rows, nRows, m.NFeatures, raw, 0, m.threads); err != nil {
		return nil, nil, err
	}
	if m.Task == Regression {
		return raw, nil, nil
	}
	probs := raw
	if m.binary {
		probs = make([]float64, 2*nRows)
		for i, p := range raw {
			probs[2*i], probs[2*i+1] = 1-p, p
		}
	}
	labels := make([]int64, nRows)
	k := m.NClasses
	for i := range nRows {
		best := 0
		for j := 1; j < k; j++ {
			if probs[i*k+j] > probs[i*k+best] {
				best = j
			}
		}
		labels[i] = int64(best)
	}
	return probs, labels, nil
}
